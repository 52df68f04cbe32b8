"""Time estimates: the shipped throughput table, the rate chosen per model, and qat.plan's lines."""

from __future__ import annotations

import pytest

from qat.orchestration.grid import expand_grid
from qat.orchestration.trunk_plan import plan_grid
from qat.plan import main as plan_main
from qat.plan import tokens_by_model
from qat.throughput import (
    Measurement,
    describe,
    flops_per_token,
    format_duration,
    load_measurements,
    rate_for,
)


def config_of(model: str, vocab_size: int, seq_len: int):
    (config,) = expand_grid(
        [f"model={model}", f"data.vocab_size={vocab_size}", f"data.seq_len={seq_len}"], {}
    )
    return config


def test_every_measurement_is_on_a_declared_device_with_its_shapes_flops():
    devices, measurements = load_measurements()
    assert {m.device for m in measurements} == set(devices)  # no device without a number
    for m in measurements:
        config = config_of(m.model, m.vocab_size, m.seq_len)
        assert m.flops_per_token == flops_per_token(config), m
        assert m.tokens_per_s > 0 and m.source


def test_a_measured_shape_gets_its_own_rate_and_others_are_scaled_down_by_flops():
    def row(model: str, flops: float, rate: float) -> Measurement:
        return Measurement("dev", model, 2048, 128, flops, rate, "test")

    nano = config_of("nano", 2048, 128)
    tiny = config_of("tiny", 2048, 128)
    small, large = flops_per_token(nano), flops_per_token(tiny)
    rows = [row("nano", small, 40_000.0), row("tiny", large, 10_000.0)]
    assert rate_for(nano, rows).tokens_per_s == 40_000.0 and not rate_for(nano, rows).scaled

    # Between two measured shapes: the smaller one's rate, scaled by the FLOPs ratio.
    micro = config_of("micro", 2048, 128)
    between = rate_for(micro, rows)
    assert between.scaled and between.measured.model == "nano"
    assert between.tokens_per_s == pytest.approx(40_000.0 * small / flops_per_token(micro))
    # Below the smallest measured shape: its rate, never more (overheads, not FLOPs).
    below = rate_for(nano, [rows[1]])
    assert below.tokens_per_s == 10_000.0 and below.scaled
    assert describe(below, "nano") == "nano 10K/s scaled from tiny"
    assert describe(rate_for(nano, rows), "nano") == "nano 40K/s"
    # Another vocabulary is another shape: the head's FLOPs change the rate.
    wide = rate_for(config_of("nano", 8192, 128), rows)
    assert wide.scaled and wide.tokens_per_s < 40_000.0
    assert describe(wide, "nano").endswith("scaled from nano at vocab 2048, seq 128")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (4.2, "4.2 s"),
        (45, "45 s"),
        (192, "3.2 min"),
        (3 * 3600, "3 h"),
        (40 * 86400, "40 days"),
        (3e3 * 365.25 * 86400, "3,000 years"),
    ],
)
def test_durations_read_in_the_best_unit(seconds, text):
    assert format_duration(seconds) == text


def test_plan_prints_the_time_on_each_device_class_and_at_a_given_rate(capsys):
    assert plan_main(["grid=smoke", "--tokens-per-s", "5K"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = expand_grid(["grid=smoke"])
    plans, _, shared = plan_grid(cells)
    assert sum(tokens_by_model(cells, plans).values()) == shared
    header = [i for i, line in enumerate(lines) if line.startswith("time to train")]
    assert len(header) == 1
    devices, measurements = load_measurements()
    estimates = lines[header[0] + 1 :]
    assert len(estimates) == len(devices) + 1
    for (device, name), line in zip(devices.items(), estimates, strict=False):
        rate = rate_for(cells[0], [m for m in measurements if m.device == device])
        assert line == (
            f"  {name}: {format_duration(shared / rate.tokens_per_s)} ({describe(rate, 'nano')})"
        )
    assert estimates[-1] == f"  at 5K tokens/s (--tokens-per-s): {format_duration(shared / 5000)}"


@pytest.mark.parametrize("rate", ["fast", "0", "-3", "0.2"])
def test_a_bad_rate_is_one_line_and_exit_2(rate, capsys):
    assert plan_main(["grid=smoke", f"--tokens-per-s={rate}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: --tokens-per-s=")


def test_a_rate_flag_without_a_value_is_refused(capsys):
    assert plan_main(["grid=smoke", "--tokens-per-s"]) == 2
    assert "needs a value" in capsys.readouterr().err


def test_docs_show_every_measurement_of_the_table():
    """docs/plan.md's table and qat/throughput.yaml list the same rates."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plan.md").read_text()
    devices, measurements = load_measurements()
    shown = {
        tuple(cell.strip() for cell in line.strip("|").split("|")[:5])
        for line in docs.splitlines()
        if line.startswith("| ") and not line.startswith(("| device", "| ---"))
    }
    assert {
        (devices[m.device], m.model, str(m.vocab_size), str(m.seq_len), f"{m.tokens_per_s:,.0f}")
        for m in measurements
    } <= shown


def cpu_rate(config) -> float:
    _, measurements = load_measurements()
    rate = rate_for(config, [m for m in measurements if m.device == "cpu-2"])
    assert not rate.scaled  # the shape itself is in the table
    return rate.tokens_per_s


def test_the_defaults_train_in_under_half_a_minute_on_2_cpu_cores():
    """`python train.py` answers in about a minute: training within 30 s at the measured rate,
    start-up and the two evaluations adding about as much again (docs/plan.md)."""
    (config,) = expand_grid([], {})
    assert config.tokens / cpu_rate(config) <= 30


def test_the_demo_grid_trains_in_under_half_a_minute_on_2_cpu_cores():
    """`make demo` answers in about a minute: the smoke grid's tokens (shared trunks counted
    once) train within 30 s at the measured rate."""
    cells = expand_grid(["grid=smoke"])
    _, _, shared = plan_grid(cells)
    assert shared / cpu_rate(cells[0]) <= 30
