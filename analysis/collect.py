"""Runs → one pandas table: from an MLflow experiment (the trainer's schema) or a CSV/Parquet file.

The table has one row per run with N (non-embedding parameters), D_fp, D_qat, D_total (tokens), B
(bits per weight, block scales counted: 4.25 for MXFP4; 16 = full precision, no QAT), format (int or
a float format's name, qat.quant.formats), fusion, loss (final validation loss of the quantized
model) and the tokens per parameter byte S_total, S_fp, S_qat = D / (N·B/8).

What repeating the data does is measured by three more columns, from MLflow (absent from tables
collected before them, and read back as they are): train_fraction (data.train_fraction, 1 when
not logged), train_part (data.train_part: which part a fraction below 1 is, "leading" when not
logged), train_loss (the last train/loss point: `final_train_loss`) and epochs,
the passes over the data the run made: D_total / (train split tokens × train_fraction). The
split's tokens are the run's `data_train_tokens` param or, for a run logged before that param
existed, another run's of the same `data_fingerprint` (equal fingerprints, equal data); NaN when
no run of that data recorded it.

The QAT phase's two optimiser knobs are columns too, from MLflow: qat_lr_ratio (the QAT peak
learning rate as a multiple of the FP peak, `schedule.qat_lr_ratio`) and qat_reset_moments
(Adam's moments reset at the switch, `optim.qat_reset_moments`); a run logged before the knobs
existed ran with the defaults, 1.0 and False. A file collected without them reads back without
them (`analysis.qat_phase` needs them; no other report reads them).

Export an experiment's FINISHED runs to a file that `read_table` (and every CLI's --csv) reads back:

    python -m analysis.collect --experiment NAME [--tracking-uri URI] --out runs.csv
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from qat.errors import QatError, report
from qat.orchestration.preflight import check_tracking
from qat.tracking_schema import (
    BITS,
    DATA_FINGERPRINT,
    FINAL_METRIC,
    FP_METRIC,
    MODEL_NAME,
    N_PARAMS,
    TOKENS_FP,
    TOKENS_QAT,
    TRAIN_LOSS,
    TRAIN_SPLIT_TOKENS,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)

REQUIRED = ("N", "D_fp", "D_qat", "B", "loss")
# MLflow param → column; all are required of a FINISHED run (qat.tracking_schema).
_PARAMS = {N_PARAMS: "N", TOKENS_FP: "D_fp", TOKENS_QAT: "D_qat", BITS: "B"}
# Columns kept as text when a file is read back (a hex run id can look like a number: "1e5...").
TEXT_COLUMNS = ("run_id", "run_key", "model", "seed", "data", "vocab_size", "format", "train_part")
# The weight format param; runs logged before it existed are of the integer family.
QUANT_FORMAT, INT_FORMAT = "quant.format", "int"
# Config params that name the data a loss was measured on: a loss is in nats per token of it.
DATA_SOURCE, VOCAB_SIZE = "data.source", "data.vocab_size"
TRAIN_FRACTION, TRAIN_PART = "data.train_fraction", "data.train_part"
# The QAT phase's knobs (params of the flattened config) and the values of a run logged before them.
QAT_LR_RATIO, QAT_RESET_MOMENTS = "schedule.qat_lr_ratio", "optim.qat_reset_moments"
# The training loss at the end of a run is its last train/loss point: the mean loss of the steps
# since the point before (on results/repro, 12-33 steps, 0.2-0.5M tokens). Measured there, the
# gap to the validation loss scatters least so: 0.027 nats within a (size, budget, bits, seed),
# against 0.031 for the points of the last 1% of tokens and 0.033 for the mean of the last three,
# which the cooldown's falling loss also lifts by 0.04 (median; 0.01-0.07) above the last point.
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class NoRunsError(AnalysisError):
    """The experiment does not exist or has no FINISHED runs."""


def _bool(value: object, where: str, name: str = "fusion") -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key.endswith(".0"):  # 1.0 / 0.0 from a numeric CSV column
        key = key[:-2]
    if key not in _TRUE:
        raise AnalysisError(f"{where}: {name}={value!r} is not a boolean; allowed: True/False/1/0")
    return _TRUE[key]


def _show(value: object) -> str:
    """A cell's value for an error message: numpy scalars as plain Python values."""
    return repr(value.item() if hasattr(value, "item") else value)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Validate a runs table and add D_total, S_total, S_fp, S_qat (and fusion=False if absent)."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise AnalysisError(
            f"runs table lacks columns {missing}; needs {list(REQUIRED)}, has {list(df.columns)}"
        )
    if df.empty:
        raise AnalysisError("runs table has no rows; needs at least one run")
    out = df.copy()
    for c in REQUIRED:
        num = pd.to_numeric(out[c], errors="coerce").astype(float)
        bad = num.isna() | ~num.map(math.isfinite)
        if bad.any():
            i = bad.idxmax()
            raise AnalysisError(
                f"column {c!r}, row {i}: {_show(out.at[i, c])} is not a finite number"
            )
        out[c] = num
    d_total = out["D_fp"] + out["D_qat"]
    if "D_total" in out.columns:
        given = pd.to_numeric(out["D_total"], errors="coerce").astype(float)
        off = ~((given - d_total).abs() <= 1e-6 * d_total)
        if off.any():
            i = off.idxmax()
            raise AnalysisError(
                f"column 'D_total', row {i}: {_show(out.at[i, 'D_total'])} != D_fp + D_qat "
                f"= {d_total[i]:g}; D_total must equal D_fp + D_qat"
            )
    out["D_total"] = d_total
    for c, ok, rule in (
        ("N", out["N"] > 0, "> 0"),
        ("B", out["B"] > 0, "> 0"),
        ("loss", out["loss"] > 0, "> 0"),
        ("D_fp", out["D_fp"] >= 0, ">= 0"),
        ("D_qat", out["D_qat"] >= 0, ">= 0"),
        ("D_total", out["D_total"] > 0, "> 0"),
    ):
        if not ok.all():
            i = (~ok).idxmax()
            raise AnalysisError(f"column {c!r}, row {i}: {_show(out.at[i, c])} must be {rule}")
    if "format" in out.columns:
        out["format"] = _formats(out)
    if "fusion" in out.columns:
        out["fusion"] = [_bool(v, f"row {i}") for i, v in out["fusion"].items()]
    else:
        out["fusion"] = False
    param_bytes = out["N"] * out["B"] / 8.0
    out["S_total"] = out["D_total"] / param_bytes
    out["S_fp"] = out["D_fp"] / param_bytes
    out["S_qat"] = out["D_qat"] / param_bytes
    return out


def _formats(runs: pd.DataFrame) -> pd.Series:
    """The `format` column checked: a blank cell is the integer family; a float format's
    quantized rows must carry its bits per weight (scale overhead counted) as B."""
    names = runs["format"].map(lambda v: INT_FORMAT if pd.isna(v) or str(v).strip() == "" else v)
    names = names.astype(str).str.strip()
    floats = names[names != INT_FORMAT]
    if floats.empty:
        return names
    from qat.quant.formats import FLOAT_FORMATS  # torch: only for a table with float formats

    for i, name in floats.items():
        if name not in FLOAT_FORMATS:
            allowed = ", ".join([INT_FORMAT, *FLOAT_FORMATS])
            raise AnalysisError(
                f"column 'format', row {i}: {name!r} is unknown; allowed: {allowed}"
            )
        bits, b = FLOAT_FORMATS[name].bits, runs.at[i, "B"]
        if b < 16.0 and not math.isclose(b, bits):
            raise AnalysisError(
                f"column 'B', row {i}: {b:g} for format {name}; B is its bits per weight, "
                f"{bits:g} (scale overhead counted)"
            )
    return names


def read_table(path: str | Path) -> pd.DataFrame:
    """Read and validate a runs table from a .csv or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"runs file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        raise AnalysisError(f"runs file {str(path)!r}: suffix {suffix!r}; allowed: .csv, .parquet")
    return prepare(df)


def _number(run_id: str, kind: str, name: str, values: dict) -> float:
    if name not in values:
        raise AnalysisError(f"run {run_id} lacks {kind} {name!r}; the trainer's schema requires it")
    try:
        return float(values[name])
    except ValueError:
        raise AnalysisError(
            f"run {run_id}: {kind} {name}={values[name]!r} is not a number"
        ) from None


def _bits_per_weight(run_id: str, name: str) -> float:
    """A float format's storage per weight, scale overhead included (the law's B)."""
    from qat.quant.formats import FLOAT_FORMATS  # torch: only for runs of a float format

    if name not in FLOAT_FORMATS:
        allowed = ", ".join([INT_FORMAT, *FLOAT_FORMATS])
        raise AnalysisError(f"run {run_id}: {QUANT_FORMAT}={name!r} is unknown; allowed: {allowed}")
    return FLOAT_FORMATS[name].bits


def _fraction(run_id: str, nominal: str | None, row: dict) -> float:
    """The run's configured QAT fraction, else D_qat / D_total when the param is absent."""
    if nominal is None:
        return row["D_qat"] / (row["D_fp"] + row["D_qat"])
    return _number(run_id, "param", "qat_frac", {"qat_frac": nominal})


def final_train_loss(history: Sequence[tuple[int, float]]) -> float:
    """The training loss at the end of a run from its train/loss points (tokens seen, mean loss
    since the previous point): the last point's. NaN without points."""
    return max(history)[1] if history else math.nan


def _epochs(rows: list[dict[str, Any]]) -> None:
    """Each row's train split tokens (its own, else its data fingerprint's) and epochs."""
    by_fingerprint = {
        row["data_fingerprint"]: row["data_train_tokens"]
        for row in rows
        if math.isfinite(row["data_train_tokens"]) and row["data_fingerprint"]
    }
    for row in rows:
        if not math.isfinite(row["data_train_tokens"]):
            row["data_train_tokens"] = by_fingerprint.get(row["data_fingerprint"], math.nan)
        available = row["data_train_tokens"] * row["train_fraction"]
        row["epochs"] = (row["D_fp"] + row["D_qat"]) / available
        del row["data_fingerprint"]


def from_mlflow(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The FINISHED runs of an MLflow experiment as a validated runs table.

    Only FINISHED runs count: the trainer marks a run FINISHED once `final/val_loss` is logged, so
    running, failed or killed cells never enter a fit.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise NoRunsError(f"MLflow experiment {experiment!r} not found at {uri}; found {names}")
    rows, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            rid, params, metrics = run.info.run_id, run.data.params, run.data.metrics
            row: dict[str, Any] = {
                col: _number(rid, "param", p, params) for p, col in _PARAMS.items()
            }
            row["format"] = params.get(QUANT_FORMAT, INT_FORMAT)
            if row["format"] != INT_FORMAT and row["B"] < 16.0:
                row["B"] = _bits_per_weight(rid, row["format"])
            row["loss"] = _number(rid, "metric", FINAL_METRIC, metrics)
            row["fp_loss"] = metrics.get(FP_METRIC, math.nan)
            fused = _bool(params.get("fusion", "False"), f"run {rid}")
            # An FP-only run has no QAT phase to fuse and no fraction, whatever its config said
            # (the trainer's run key ignores both); otherwise the configured fraction, of which
            # D_qat / D_total is the value rounded to whole optimizer steps.
            fp_only = row["B"] >= 16.0 or row["D_qat"] <= 0
            row["fusion"] = fused and not fp_only
            row["qat_frac"] = 0.0 if fp_only else _fraction(rid, params.get("qat_frac"), row)
            row["run_id"] = rid
            row["run_key"] = run.data.tags.get("run_key", "")
            row["model"] = params.get(MODEL_NAME, "")
            row["seed"] = params.get("seed", "")
            for param, col in ((DATA_SOURCE, "data"), (VOCAB_SIZE, "vocab_size")):
                if param in params:  # absent from runs logged without a data config
                    row[col] = params[param]
            row["train_fraction"] = _number(
                rid, "param", TRAIN_FRACTION, {TRAIN_FRACTION: 1.0, **params}
            )
            row["train_part"] = params.get(TRAIN_PART, "leading")
            row["qat_lr_ratio"] = _number(rid, "param", QAT_LR_RATIO, {QAT_LR_RATIO: 1.0, **params})
            row["qat_reset_moments"] = _bool(
                params.get(QAT_RESET_MOMENTS, "False"), f"run {rid}", QAT_RESET_MOMENTS
            )
            history = client.get_metric_history(rid, TRAIN_LOSS)
            row["train_loss"] = final_train_loss([(m.step, m.value) for m in history])
            row["data_train_tokens"] = float(params.get(TRAIN_SPLIT_TOKENS, math.nan))
            row["data_fingerprint"] = params.get(DATA_FINGERPRINT, "")
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        raise NoRunsError(f"MLflow experiment {experiment!r} at {uri} has no FINISHED runs")
    _epochs(rows)
    log.info("collected %d FINISHED runs from experiment %r at %s", len(rows), experiment, uri)
    return prepare(pd.DataFrame(rows))


def load_runs(
    experiment: str | None = None,
    csv: str | Path | None = None,
    tracking_uri: str | None = None,
) -> tuple[pd.DataFrame, str]:
    """Runs from the experiment if it has FINISHED runs, else from the file, and their source.

    With both given, the file is the fallback for an experiment that is missing or empty.
    """
    if experiment is None and csv is None:
        raise AnalysisError("no runs source: give an MLflow experiment name or a CSV/Parquet file")
    if experiment is not None:
        try:
            return from_mlflow(experiment, tracking_uri), f"mlflow:{experiment}"
        except NoRunsError as e:
            if csv is None:
                raise
            log.warning("%s; using %s instead", e, csv)
    assert csv is not None  # checked above: with no experiment, csv is given
    return read_table(csv), f"file:{csv}"


def export(experiment: str, out: str | Path, tracking_uri: str | None = None) -> pd.DataFrame:
    """Write the FINISHED runs of `experiment` to `out` (.csv or .parquet); returns the table.

    The file holds every column of `from_mlflow` and reads back with `read_table` to the same
    table (the loss to the last bit: CSV floats are written with 17 significant digits).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise AnalysisError(f"output {str(out)!r}: suffix {suffix!r}; allowed: .csv, .parquet")
    runs = from_mlflow(experiment, tracking_uri)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        runs.to_csv(out, index=False, float_format="%.17g")
    else:
        runs.to_parquet(out, index=False)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.collect",
        description="Export the FINISHED runs of an MLflow experiment to a runs table file.",
    )
    ap.add_argument("--experiment", required=True, help="MLflow experiment holding the grid")
    ap.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    ap.add_argument("--out", required=True, type=Path, help="runs file to write (.csv/.parquet)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_tracking(args.tracking_uri)  # a dead server: one line now, not after retries
        runs = export(args.experiment, args.out, args.tracking_uri)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except QatError as e:  # the tracking store failed: a run-time error
        return report(e)
    log.info("wrote %d runs to %s", len(runs), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
