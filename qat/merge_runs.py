"""Merge the finished cells of MLflow stores into one: ``python -m qat.merge_runs``.

    python -m qat.merge_runs --experiment repro --into sqlite:///results/repro/mlflow.db \\
        sqlite:///call1/mlflow.db sqlite:///call2/mlflow.db

Each source's FINISHED runs (cells with their final metric) are copied with their params, tags,
every metric's history, status and, where the source's artifact folder can be read, artifacts.
A cell the target has finished is skipped, so a merge can be repeated. The line per source
says how many copied cells brought artifacts: a store from another machine names artifact
folders that stayed there. A plain path is taken as a SQLite file; a source path ending in
``.gz`` as a gzipped one (what bench/lent_gpu_grid.sh brings back), read from a temporary
copy. See docs/mlflow.md.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from pathlib import Path

from qat.errors import ConfigError, QatError, report


def store_uri(text: str, must_exist: bool) -> str:
    """A tracking URI from ``text`` (a URI, or a SQLite file's path)."""
    uri = text if "://" in text else f"sqlite:///{Path(text).resolve()}"
    if must_exist and uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise ConfigError(f"{text}: no such MLflow store (a SQLite file was expected)")
    return uri


def unzipped(text: str, folder: Path) -> str:
    """``text`` itself, or for a gzipped SQLite file the path of its unzipped copy in ``folder``."""
    if "://" in text or not text.endswith(".gz"):
        return text
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"{text}: no such MLflow store (a gzipped SQLite file was expected)")
    copy = folder / f"{len(list(folder.iterdir()))}-{path.name[: -len('.gz')]}"
    try:
        with gzip.open(path, "rb") as packed, copy.open("wb") as plain:
            shutil.copyfileobj(packed, plain)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{text}: not a readable gzip file ({error})") from error
    return str(copy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qat.merge_runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="+",
        help="stores to copy from (URIs, SQLite files or gzipped SQLite files)",
    )
    parser.add_argument("--into", required=True, help="the store to copy into (created if new)")
    parser.add_argument("--experiment", required=True, help="the MLflow experiment of the grid")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from qat.store.merge import merge_finished

    with tempfile.TemporaryDirectory(prefix="merge-runs-") as unzip_folder:
        try:
            folder = Path(unzip_folder)
            target = store_uri(args.into, must_exist=False)
            sources = [store_uri(unzipped(text, folder), must_exist=True) for text in args.sources]
            for text, source in zip(args.sources, sources, strict=True):
                if source == target:
                    raise ConfigError(f"{text} is the store merged into (--into)")
            for text, source in zip(args.sources, sources, strict=True):
                merged = merge_finished(source, target, args.experiment)
                line = (
                    f"{text}: copied {merged.copied} finished cells, "
                    f"{merged.already_there} already in the target, "
                    f"{merged.not_finished} not finished (left out)"
                )
                line += f", {merged.with_artifacts} of them with their artifacts"
                if merged.artifacts_missing:
                    line += (
                        f"; {merged.artifacts_missing} without their artifacts (not readable here)"
                    )
                print(line)
        except QatError as error:
            return report(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
