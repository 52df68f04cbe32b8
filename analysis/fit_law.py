"""`make fit-law`: fit a law to a grid's runs, write the report, log it to MLflow.

    python -m analysis.fit_law [--experiment NAME | --csv FILE] [--law qat|chinchilla]
        [--tracking-uri URI] [--starts N] [--bootstrap N] --out DIR

Writes DIR/law.json (with the fitted runs' domain), DIR/residuals.csv, DIR/plots/*.png|pdf and
DIR/law.md (the report, with the fit's health), and logs them as a run of the MLflow experiment
`analysis` at the same tracking URI. The CLI's last lines are the fit's health: parameters at
their bounds, an irreducible loss of about 0, exponents of the wrong sign. The report is law.md,
not summary.md, so that `reports.mini` (which writes the same law files) can share DIR.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.collect import load_runs, resolve_tracking_uri
from analysis.errors import AnalysisError
from analysis.fit import DEFAULT_DELTA, FitResult, fit
from analysis.health import health_lines
from analysis.law import LAWS
from analysis.report import write_report
from qat.tracking import classic_experiment

ANALYSIS_EXPERIMENT = "analysis"
REPORT_NAME = "law.md"
log = logging.getLogger("analysis.fit_law")


def log_to_mlflow(result: FitResult, out: Path, source: str, tracking_uri: str | None) -> str:
    """Log a fit (settings, R², parameters, every file under `out`) as a run of `analysis`."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    exp_id = classic_experiment(client, ANALYSIS_EXPERIMENT)  # the UI's runs table, not GenAI
    fitted = result.fitted
    run = client.create_run(
        exp_id, run_name=f"fit-{fitted.law.name}", tags={"source": source, "law": fitted.law.name}
    )
    rid = run.info.run_id
    s = fitted.settings
    params = {
        "law": fitted.law.name,
        "source": source,
        "n_points": fitted.n_points,
        **{k: s[k] for k in ("starts", "start_kind", "delta", "bootstrap", "seed")},
    }
    metrics = {"r2": fitted.r2, "objective": s["objective"]}
    metrics |= {f"r2_bits_{k}": v for k, v in fitted.r2_by_bits.items()}
    metrics |= {f"r2_format_{k}": v for k, v in s.get("r2_by_format", {}).items()}
    if "r2_by_format" in s:  # a law with format factors: which formats, the base first
        params["formats"] = ",".join(fitted.law.formats)
    metrics |= {f"param_{k}": v for k, v in fitted.params.items()}
    now = int(time.time() * 1000)
    client.log_batch(
        rid,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.log_artifacts(rid, str(out))
    client.set_terminated(rid)
    return rid


def fit_and_report(
    runs: pd.DataFrame,
    source: str,
    out: Path,
    law: str = "qat",
    *,
    starts: int | None = None,
    delta: float = DEFAULT_DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> FitResult:
    """Fit `law` to `runs` and write law.json, residuals.csv, plots/ and law.md under `out`.

    The one path from runs to these files: `make fit-law` and `reports.mini` both call it, so
    the same runs and settings give the same files.
    """
    result = fit(
        runs,
        law,
        starts=starts,
        delta=delta,
        bootstrap=bootstrap,
        seed=seed,
        workers=workers,
        progress=progress,
    )
    write_report(result, runs, out, source, REPORT_NAME)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.fit_law", description="Fit a scaling law to a grid of runs."
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="MLflow experiment holding the grid's runs")
    src.add_argument("--csv", type=Path, help="CSV/Parquet with columns N, D_fp, D_qat, B, loss")
    ap.add_argument("--law", choices=sorted(LAWS), default="qat")
    ap.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    ap.add_argument("--starts", type=int, help="multi-start count (default: the law's own)")
    ap.add_argument("--bootstrap", type=int, default=0, help="resamples for 95%% CIs (default 0)")
    ap.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="Huber δ on log-loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, help="processes (default: all CPUs)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the fit to MLflow")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs, source = load_runs(args.experiment, args.csv, args.tracking_uri)
        log.info("%d runs from %s", len(runs), source)
        result = fit_and_report(
            runs,
            source,
            args.out,
            args.law,
            starts=args.starts,
            delta=args.delta,
            bootstrap=args.bootstrap,
            seed=args.seed,
            workers=args.workers,
            progress=True,
        )
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    f = result.fitted
    log.info("fitted %s law on %d points: R² = %.5f", f.law.name, f.n_points, f.r2)
    log.info("wrote %s", args.out / REPORT_NAME)
    if not args.no_mlflow:
        rid = log_to_mlflow(result, args.out, source, args.tracking_uri)
        log.info("logged MLflow run %s to experiment %r", rid, ANALYSIS_EXPERIMENT)
    # Last, where a reader looks: a high R² does not make a fit trustworthy.
    for line in health_lines(f):
        log.info("%s", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
