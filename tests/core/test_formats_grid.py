"""The formats grid (conf/grid/formats*.yaml): the cells it names, that each is its own run, that
every cell validates with trainer=packed, and that the whole grid fits its token budget."""

from __future__ import annotations

from collections import Counter

import pytest

from qat.orchestration.grid import expand_grid
from qat.orchestration.trunk_plan import plan_grid, unique_cells

PACKED = "trainer=packed"
SIZES, BUDGETS, FRACTIONS = 2, 3, 5
# The grid's cell-tokens with shared trunks (both parts): two or three GPU calls of ~9 minutes.
TOKEN_BUDGET = 6e9


@pytest.fixture(scope="module")
def parts() -> dict[str, list]:
    return {g: expand_grid([f"grid={g}", PACKED]) for g in ("formats", "formats-8bit")}


def _kind(cell) -> tuple[str, float]:
    return ("fp", cell.bits) if cell.is_fp_only else (cell.quant.format, cell.bits)


def test_the_grid_pairs_each_format_with_its_rival_at_equal_element_bits(parts):
    per_part = {g: Counter(_kind(c) for c in unique_cells(cells)) for g, cells in parts.items()}
    each = SIZES * BUDGETS * FRACTIONS
    assert per_part["formats"] == {
        ("int", 4.0): each,
        ("fp4_e2m1", 4.0): each,
        ("mxfp4", 4.0): each,
        ("nvfp4", 4.0): each,
        ("fp", 16.0): SIZES * BUDGETS,  # the anchor: one FP cell per (size, budget)
    }
    assert per_part["formats-8bit"] == {("int", 8.0): each, ("fp8_e4m3", 8.0): each}
    cells = [c for g in parts.values() for c in unique_cells(g)]
    assert {c.tracking.experiment for c in cells} == {"formats"}
    assert {c.trainer.backend for c in cells} == {"packed"}
    assert {c.model.name for c in cells} == {"mini-xs", "mini-s"}
    assert len({c.qat_frac for c in cells if not c.is_fp_only}) == FRACTIONS


def test_every_cell_of_both_parts_is_its_own_run(parts):
    cells = [c for g in parts.values() for c in unique_cells(g)]
    keys = {c.run_key for c in cells}
    assert len(keys) == len(cells)
    # The formats differ in nothing but the format: each still gets its own key.
    science = {
        (c.model.name, c.tokens, c.qat_frac, c.bits, c.quant.format) for c in cells if c.bits < 16
    }
    assert len(science) == len([c for c in cells if c.bits < 16])


def test_the_grid_fits_its_token_budget(parts):
    shared = sum(plan_grid(cells)[2] for cells in parts.values())
    assert 3e9 < shared <= TOKEN_BUDGET
