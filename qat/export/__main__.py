"""``python -m qat.export RUN --out DIR --format packed|hf``: a finished run's quantized model
as bit-packed safetensors (packed) or a transformers Llama folder (hf).

RUN is a run folder, a run key (with a folder under --runs-dir), an MLflow run id, or the
overrides that name one cell (``grid=smoke bits=4 qat_frac=0.5``). ``--log`` also logs the
folder as an artifact of the cell's MLflow run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qat.errors import QatError, report
from qat.export.errors import ExportError
from qat.export.hf import export_hf
from qat.export.packed import export_packed
from qat.export.packing import TRITS
from qat.export.run import FinishedRun, locate
from qat.tracking_schema import resolve_tracking_uri

FORMATS = ("packed", "hf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.export", description=__doc__)
    parser.add_argument(
        "run", nargs="+", help="run folder, run key, MLflow run id, or one cell's overrides"
    )
    parser.add_argument("--out", type=Path, required=True, help="the folder to create")
    parser.add_argument("--format", choices=FORMATS, default="packed")
    parser.add_argument(
        "--ternary",
        choices=(TRITS, "bits"),
        default=TRITS,
        help="ternary codes five to a byte (trits, 1.6 bits) or in 2 bits each (bits)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path(os.environ.get("QAT_RUN_DIR") or "runs"),
        help="where run keys' folders are (default: $QAT_RUN_DIR or ./runs)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    parser.add_argument("--log", action="store_true", help="log the export to the cell's run")
    args = parser.parse_args(argv)
    try:
        run = locate(_run_name(args.run), args.runs_dir, args.tracking_uri)
        if args.log and run.run_id is None:
            raise ExportError(f"run {run.run_key} names no MLflow run: cannot --log")
        if args.format == "packed":
            export_packed(run, args.out, TRITS if args.ternary == TRITS else "bits2")
        else:
            export_hf(run, args.out)
        if args.log:
            _log(run, args.out, args.format, args.tracking_uri)
    except QatError as error:
        return report(error)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"exported run {run.run_key} ({args.format}) to {args.out}: {size / 1e6:.2f} MB")
    return 0


def _run_name(words: list[str]) -> str:
    """The run folder of a cell given as overrides; any other RUN as it is."""
    if not any("=" in word for word in words):
        if len(words) > 1:
            raise ExportError(f"one RUN at a time, got {len(words)}: {' '.join(words)}")
        return words[0]
    from qat.orchestration.grid import expand_grid

    cells = expand_grid(words)
    if len(cells) != 1:
        raise ExportError(f"{' '.join(words)} names {len(cells)} cells; name exactly one")
    return str(Path(cells[0].run_dir) / cells[0].run_key)


def _log(run: FinishedRun, out: Path, fmt: str, tracking_uri: str | None) -> None:
    from mlflow.tracking import MlflowClient

    assert run.run_id is not None  # checked before the export was written
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    client.log_artifacts(run.run_id, str(out), artifact_path=f"export/{fmt}")
    print(f"logged to MLflow run {run.run_id} as export/{fmt}")


if __name__ == "__main__":
    sys.exit(main())
