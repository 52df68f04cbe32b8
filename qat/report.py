"""Print a table of an experiment's finished runs: ``python -m qat.report --experiment qat``."""

from __future__ import annotations

import argparse
import sys

from qat.errors import QatError, report
from qat.tracking import Tracker
from qat.tracking_schema import (
    BITS,
    FINAL_METRIC,
    FP_METRIC,
    MODEL_NAME,
    TOKENS_TOTAL,
)

COLUMNS = {
    f"params.{MODEL_NAME}": "model",
    f"params.{BITS}": "bits",
    "params.qat_frac": "qat_frac",
    "params.fusion": "fusion",
    f"params.{TOKENS_TOTAL}": "tokens",
    f"metrics.{FP_METRIC}": "fp_val_loss",
    f"metrics.{FINAL_METRIC}": "final_val_loss",
}


def finished_runs_table(uri: str | None, experiment: str):
    import mlflow

    tracker = Tracker(uri, experiment)
    runs = tracker.call(
        lambda _: mlflow.search_runs(
            [tracker.experiment_id], filter_string="attributes.status = 'FINISHED'"
        )
    )
    if runs.empty:
        return runs
    present = [c for c in COLUMNS if c in runs.columns]
    table = runs[present].rename(columns=COLUMNS)
    table["bits"] = table["bits"].astype(float)
    table["qat_frac"] = table["qat_frac"].astype(float)
    table = table.sort_values(["model", "tokens", "bits", "qat_frac"]).reset_index(drop=True)
    table["bits"] = table["bits"].map(lambda b: "fp" if b == 16 else f"{b:g}")
    table["qat_frac"] = [
        "-" if bits == "fp" else f"{f:g}"
        for bits, f in zip(table["bits"], table["qat_frac"], strict=True)
    ]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="qat")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    args = parser.parse_args(argv)
    try:
        import mlflow

        tracker = Tracker(args.tracking_uri, args.experiment)
        mlflow.set_tracking_uri(tracker.uri)
        table = finished_runs_table(tracker.uri, args.experiment)
    except QatError as error:
        return report(error)
    if table.empty:
        print(f"no finished runs in experiment '{args.experiment}' at {tracker.uri}")
        return 0
    print(f"{len(table)} finished run(s) in experiment '{args.experiment}' ({tracker.uri}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
