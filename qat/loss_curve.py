"""A cell's loss curve: training loss and its evaluations against tokens, the QAT switch marked.

Read from the run folder's metrics.jsonl (the trunk's shared prefix included), drawn with the
object-oriented matplotlib API, which renders through Agg without pyplot's global state.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from qat.schedule import plan_phases
from qat.tracking import run_name
from qat.tracking_schema import FINAL_METRIC, FP_METRIC, LOSS_CURVE_ARTIFACT, TRAIN_LOSS

if TYPE_CHECKING:
    from qat.config import RunConfig
    from qat.tracking import Tracker


def read_series(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (tokens, value) points, sorted by tokens; a point logged again after a
    resume keeps its latest value."""
    latest: dict[str, dict[int, float]] = {}
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        tokens = int(record.pop("tokens"))
        record.pop("time", None)
        for name, value in record.items():
            latest.setdefault(name, {})[tokens] = float(value)
    return {name: sorted(points.items()) for name, points in latest.items()}


def loss_curve_figure(
    series: dict[str, list[tuple[int, float]]], switch_tokens: int | None, title: str
) -> Figure:
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    train = [(t, v) for t, v in series.get(TRAIN_LOSS, []) if math.isfinite(v)]
    if train:
        ax.plot([t for t, _ in train], [v for _, v in train], lw=1.2, label="train loss")
    for name, marker, color, label in (
        (FP_METRIC, "o", "tab:green", "val loss, FP model"),
        (FINAL_METRIC, "*", "tab:red", "val loss, final (quantized) model"),
    ):
        points = series.get(name, [])
        if points:
            xs, ys = [t for t, _ in points], [v for _, v in points]
            ax.scatter(xs, ys, marker=marker, s=70, color=color, label=label)
            ax.annotate(
                f"{points[-1][1]:.3f}", points[-1], xytext=(4, 4), textcoords="offset points"
            )
    if switch_tokens is not None:
        ax.axvline(switch_tokens, color="grey", ls="--", lw=1, label="QAT switch")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_loss_curve(
    metrics_path: Path, out_path: Path, switch_tokens: int | None, title: str
) -> Path:
    """Draw ``metrics_path``'s curve into ``out_path`` (PNG); returns ``out_path``."""
    figure = loss_curve_figure(read_series(metrics_path), switch_tokens, title)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    return out_path


def log_loss_curve(tracker: Tracker, run_id: str, config: RunConfig) -> None:
    """Draw the finished cell's curve into its run folder and log it as ``loss_curve.png``.

    Best effort: a figure that cannot be drawn is one warning line, never a failed cell."""
    run_dir = Path(config.run_dir) / config.run_key
    plan = plan_phases(config)
    switch = plan.tokens_fp if plan.quantized else None
    try:
        path = write_loss_curve(
            run_dir / "metrics.jsonl", run_dir / LOSS_CURVE_ARTIFACT, switch, run_name(config)
        )
        tracker.log_artifact(run_id, path)
    except Exception as error:  # the cell trained and its metrics are logged: keep it FINISHED
        print(f"warning: [{config.run_key}] {LOSS_CURVE_ARTIFACT} not logged: {error}", flush=True)
