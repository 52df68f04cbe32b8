"""Plan a grid: ``python -m qat.plan grid=paper [overrides] [--tokens-per-s RATE]``.

Prints, per trunk, the cells' branch points and the tokens trained naively (every cell trains
its own FP prefix) against with sharing (each trunk once, then each cell from its branch point);
then how long those tokens take to train on each device class, from the measured tokens/s in
qat/throughput.yaml (docs/plan.md), and at RATE tokens/s (e.g. 5000, 20K: your own rate, as
the trainer's progress bar shows it) when given.
"""

from __future__ import annotations

import sys
from collections import Counter

from qat.config import RunConfig
from qat.errors import ConfigError, QatError, report
from qat.orchestration.grid import cli_overrides, expand_grid
from qat.orchestration.trunk_plan import TrunkPlan, plan_grid, unique_cells
from qat.schedule import plan_phases
from qat.throughput import describe, format_duration, load_measurements, parse_rate, rate_for
from qat.units import format_count

RATE_FLAG = "--tokens-per-s"


def split_rate(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--tokens-per-s RATE`` (or ``--tokens-per-s=RATE``), and RATE."""
    rest, rate = [], None
    args = iter(argv)
    for arg in args:
        if arg == RATE_FLAG:
            rate = next(args, None)
            if rate is None:
                raise ConfigError(f"{RATE_FLAG} needs a value, e.g. {RATE_FLAG} 5000")
        elif arg.startswith(f"{RATE_FLAG}="):
            rate = arg.partition("=")[2]
        else:
            rest.append(arg)
    return rest, rate


def tokens_by_model(cells: list[RunConfig], plans: list[TrunkPlan]) -> dict[str, int]:
    """Tokens the grid trains per model, shared trunks counted once."""
    tokens: Counter[str] = Counter()
    for cell in unique_cells(cells):
        tokens[cell.model.name] += plan_phases(cell).tokens_total
    for trunk in plans:
        tokens[trunk.model] -= trunk.naive_tokens - trunk.shared_tokens
    return dict(tokens)


def print_estimates(cells: list[RunConfig], plans: list[TrunkPlan], rate: float | None) -> None:
    """The time the grid's tokens take per device class, and at the user's own rate."""
    tokens = tokens_by_model(cells, plans)
    config_of = {cell.model.name: cell for cell in unique_cells(cells)}
    total = sum(tokens.values())
    devices, measurements = load_measurements()
    print(
        f"time to train {format_count(total)} tokens, one cell at a time (training alone, at "
        "the rates in docs/plan.md):"
    )
    for device, name in devices.items():
        rows = [m for m in measurements if m.device == device]
        rates = {model: rate_for(config_of[model], rows) for model in tokens}
        seconds = sum(tokens[model] / rates[model].tokens_per_s for model in tokens)
        used = ", ".join(describe(rate, model) for model, rate in rates.items())
        print(f"  {name}: {format_duration(seconds)} ({used})")
    if rate is not None:
        print(f"  at {format_count(rate)} tokens/s ({RATE_FLAG}): {format_duration(total / rate)}")


def main(argv: list[str] | None = None) -> int:
    try:
        args, rate_text = split_rate(sys.argv[1:] if argv is None else argv)
        rate = None if rate_text is None else parse_rate(rate_text)
    except ConfigError as error:
        return report(error)
    overrides = cli_overrides(args, __doc__)
    if overrides is None:
        return 0
    try:
        cells = expand_grid(overrides)
    except QatError as error:
        return report(error)
    plans, naive, shared = plan_grid(cells)
    print(f"{len(unique_cells(cells))} cells, {len(plans)} trunk(s)")
    for trunk in plans:
        points = ", ".join(format_count(t) for t in trunk.branch_tokens)
        print(
            f"trunk {trunk.key} ({trunk.model}, {trunk.cells} cells): trained "
            f"{format_count(trunk.naive_tokens)} naive vs {format_count(trunk.shared_tokens)} "
            f"shared; branch points (tokens): {points}"
        )
    saving = 1 - shared / naive if naive else 0.0
    print(
        f"total: {format_count(naive)} tokens naive, {format_count(shared)} with shared trunks "
        f"({saving:.1%} saved)"
    )
    # Every saved token is an FP token: the share of the FP phase that no longer needs training.
    fp_naive = sum(plan_phases(c).tokens_fp for c in unique_cells(cells))
    fp_shared = fp_naive - (naive - shared)
    fp_saving = 1 - fp_shared / fp_naive if fp_naive else 0.0
    print(
        f"FP phase: {format_count(fp_naive)} tokens naive, {format_count(fp_shared)} shared "
        f"({fp_saving:.1%} saved)"
    )
    print_estimates(cells, plans, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
