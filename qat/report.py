"""Tables of an experiment's finished runs, one per corpus and vocabulary (losses of different
tokenizers are not comparable), each followed by the count of its runs that did not finish:

    python -m qat.report --experiment qat
    python -m qat.report --experiment qat --plots results/plots --log-plots

``--plots DIR`` also draws each table's final loss against the QAT fraction (qat.grid_plots);
``--log-plots`` logs them to a run of the MLflow experiment ``analysis``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qat.errors import QatError
from qat.errors import report as report_error
from qat.orchestration.preflight import check_tracking
from qat.tracking import Tracker
from qat.tracking_schema import (
    ANALYSIS_TAG,
    BITS,
    FINAL_METRIC,
    FP_METRIC,
    MODEL_NAME,
    RUN_KEY_TAG,
    TOKENS_TOTAL,
)

ANALYSIS_EXPERIMENT = "analysis"  # where analysis.fit_law logs its fits too
COLUMNS = {
    f"params.{MODEL_NAME}": "model",
    f"params.{BITS}": "bits",
    "params.qat_frac": "qat_frac",
    "params.fusion": "fusion",
    f"params.{TOKENS_TOTAL}": "tokens",
    "params.seed": "seed",
    f"metrics.{FP_METRIC}": "fp_val_loss",
    f"metrics.{FINAL_METRIC}": "final_val_loss",
}
SOURCE, VOCAB = "params.data.source", "params.data.vocab_size"
FORMAT = "params.quant.format"  # shown only where a float format (mxfp4, ...) ran
UNFINISHED = ("FAILED", "KILLED", "RUNNING")


@dataclass(frozen=True)
class GroupReport:
    """The runs of one corpus and vocabulary."""

    source: str
    vocab_size: str
    table: pd.DataFrame  # the finished runs
    unfinished: dict[str, int]  # status → runs of this group that did not finish

    @property
    def title(self) -> str:
        return f"data {self.source}, vocab {self.vocab_size}"

    def unfinished_line(self) -> str:
        counts = ", ".join(f"{self.unfinished.get(s, 0)} {s.lower()}" for s in UNFINISHED)
        return f"not in the table: {counts}"


def cell_runs(tracker: Tracker) -> pd.DataFrame:
    """Every run of the tracker's experiment that is a grid cell (it has a run key)."""
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    runs = tracker.call(lambda _: mlflow.search_runs([tracker.experiment_id]))
    key = f"tags.{RUN_KEY_TAG}"
    if runs.empty or key not in runs.columns:
        return pd.DataFrame()
    return runs[runs[key].notna()].reset_index(drop=True)


def group_reports(runs: pd.DataFrame) -> list[GroupReport]:
    """One report per (corpus, vocabulary), in sorted order."""
    if runs.empty:
        return []
    runs = runs.copy()
    for column in (SOURCE, VOCAB):
        if column not in runs.columns:
            runs[column] = None
        runs[column] = runs[column].fillna("?")  # failed before its params were logged
    reports = []
    for (source, vocab), group in runs.groupby([SOURCE, VOCAB], sort=True):
        finished = group[(group["status"] == "FINISHED") & _has(group, f"metrics.{FINAL_METRIC}")]
        unfinished = group[group["status"] != "FINISHED"]["status"].value_counts()
        reports.append(GroupReport(str(source), str(vocab), _table(finished), unfinished.to_dict()))
    return reports


def _has(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame[column].notna()


def _table(finished: pd.DataFrame) -> pd.DataFrame:
    present = [c for c in COLUMNS if c in finished.columns]
    table = finished[present].rename(columns=COLUMNS)
    if table.empty:
        return table.reset_index(drop=True)
    if FORMAT in finished.columns:
        # Runs from before the key (or with the default) are the integer family.
        formats = finished[FORMAT].fillna("int")
        if (formats != "int").any():
            table.insert(1, "format", formats)
    table["bits"] = table["bits"].astype(float)
    table["qat_frac"] = table["qat_frac"].astype(float)
    table["tokens"] = table["tokens"].astype(int)
    table = table.sort_values(["model", "tokens", "bits", "qat_frac"]).reset_index(drop=True)
    table["bits"] = table["bits"].map(lambda b: "fp" if b == 16 else f"{b:g}")
    table["qat_frac"] = [
        "-" if bits == "fp" else f"{f:g}"
        for bits, f in zip(table["bits"], table["qat_frac"], strict=True)
    ]
    return table


def print_reports(reports: list[GroupReport], experiment: str, uri: str) -> None:
    finished = sum(len(r.table) for r in reports)
    print(f"{finished} finished run(s) in experiment '{experiment}' ({uri}):")
    for report in reports:
        print(f"\n{report.title}: {len(report.table)} finished")
        if not report.table.empty:
            print(report.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(report.unfinished_line())


def log_plots(tracker: Tracker, experiment: str, plots: list[Path]) -> str:
    """Log ``plots`` to a new run ``analysis-<experiment>`` of the ``analysis`` experiment;
    returns its id. Kept apart from the cells, whose experiment holds grid cells only."""
    from qat.tracking import classic_experiment

    experiment_id = tracker.call(lambda c: classic_experiment(c, ANALYSIS_EXPERIMENT))
    run = tracker.call(
        lambda c: c.create_run(
            experiment_id, run_name=f"analysis-{experiment}", tags={ANALYSIS_TAG: experiment}
        )
    )
    run_id: str = run.info.run_id
    for path in plots:
        tracker.log_artifact(run_id, path)
    tracker.end(run_id, "FINISHED")
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.report", description=__doc__)
    parser.add_argument("--experiment", default="qat")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    parser.add_argument(
        "--plots", type=Path, help="also draw each table's losses into DIR/<data>-v<vocab>.png"
    )
    parser.add_argument(
        "--log-plots",
        action="store_true",
        help="log the plots to a run 'analysis-<experiment>' of the MLflow experiment 'analysis'",
    )
    args = parser.parse_args(argv)
    if args.log_plots and args.plots is None:
        parser.error("--log-plots needs --plots DIR")
    try:
        check_tracking(args.tracking_uri)  # a dead server: one line now, not after retries
        tracker = Tracker(args.tracking_uri, args.experiment)
        reports = group_reports(cell_runs(tracker))
        if not reports:
            print(f"no runs in experiment '{args.experiment}' at {tracker.uri}")
            return 0
        print_reports(reports, args.experiment, tracker.uri)
        if args.plots is not None:
            _plots(tracker, args, reports)
    except QatError as error:
        return report_error(error)
    return 0


def _plots(tracker: Tracker, args: Any, reports: list[GroupReport]) -> None:
    from qat.grid_plots import write_group_plot

    written = [
        write_group_plot(r.table, r.title, args.plots, f"{Path(r.source).name}-v{r.vocab_size}")
        for r in reports
        if not r.table.empty
    ]
    for path in written:
        print(f"wrote {path}")
    if args.log_plots and written:
        run_id = log_plots(tracker, args.experiment, written)
        print(f"logged {len(written)} plot(s) to MLflow run {run_id} (experiment 'analysis')")


if __name__ == "__main__":
    sys.exit(main())
