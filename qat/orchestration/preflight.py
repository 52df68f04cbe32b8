"""Checks that take a second and save a failed launch its minutes: run before anything heavy is
imported or written (no MLflow store, no run folder, no claim), each failing as one line."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from qat.config import RunConfig
from qat.errors import ConfigError, TrackingError

CONNECT_TIMEOUT_S = 2.0


def preflight(config: RunConfig) -> None:
    """Refuse a launch whose tracking server is down or whose data cannot be read."""
    check_tracking(config.tracking.uri)
    check_data(config)


def check_tracking(uri: str | None) -> None:
    """TrackingError unless a tracking server's port answers within CONNECT_TIMEOUT_S; file and
    SQLite stores are created on first use, so only servers are probed."""
    from qat.tracking_schema import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri)
    parts = urlsplit(resolved)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return
    except ConnectionRefusedError:
        reason = "connection refused"
    except TimeoutError:
        reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except socket.gaierror:
        reason = f"unknown host {parts.hostname!r}"
    except OSError as error:
        reason = error.strerror or type(error).__name__
    raise TrackingError(
        f"MLflow tracking server {resolved} is not reachable ({reason}); start it "
        "(slurm/mlflow_server.sh) or set tracking.uri / $MLFLOW_TRACKING_URI"
    )


def check_data(config: RunConfig) -> None:
    """A prepared dataset's shards must be whole (their headers and sizes: no full read); an
    unprepared one needs a source that exists and can be read."""
    from qat.data.corpus import check_source
    from qat.data.errors import DataError
    from qat.data.info import TRAIN_FILE, VAL_FILE, read_meta
    from qat.data.prepare import default_data_dir
    from qat.data.shards import check_shard

    data, init = config.data, config.init.source
    folder = (
        Path(data.cache_dir)
        if data.cache_dir
        else default_data_dir(data.source, data.vocab_size, tokenizer=init)
    )
    if read_meta(folder) is not None:
        for name in (TRAIN_FILE, VAL_FILE):
            check_shard(folder / name)
        return
    try:
        check_source(data.source)
    except DataError as error:
        raise ConfigError(f"data.source: {error}") from None
    path = Path(data.source).expanduser()
    if path.exists() and not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise ConfigError(f"data.source={data.source!r} is not readable by this user")
