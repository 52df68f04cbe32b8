"""User-facing error types.

Every failure a user can cause (bad config, corrupt data, NaN loss, dead tracking server) is raised
as a subclass of :class:`QatError`; the entry points print it as one line and exit non-zero: 2 for
a config error, 1 for a failure at run time (and 130 for Ctrl-C).
"""

from collections.abc import Iterable


class QatError(Exception):
    """Base class of every error whose message is meant for the user as it is."""


class ConfigError(QatError, ValueError):
    """A configuration value is out of range or unknown."""


class TrainingError(QatError, RuntimeError):
    """Training cannot go on (a NaN loss, for example); the run is marked FAILED."""


class DataError(QatError, ValueError):
    """Bad data input (a corrupt shard, a missing corpus); names the file and what is allowed."""


class TrackingError(QatError, RuntimeError):
    """The MLflow store cannot be reached or written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped training at a step boundary, after a checkpoint at ``tokens``."""

    def __init__(self, tokens: int | None = None) -> None:
        super().__init__()
        self.tokens = tokens


CONFIG_EXIT = 2  # the input was wrong: nothing ran
RUNTIME_EXIT = 1  # it ran and failed (data, training, tracking)
INTERRUPT_EXIT = 130  # 128 + SIGINT, as shells report a Ctrl-C


def exit_code(error: QatError) -> int:
    return CONFIG_EXIT if isinstance(error, ConfigError) else RUNTIME_EXIT


def report(error: QatError) -> int:
    """Print ``error`` as the one ``error: ...`` line every command uses; its exit code."""
    import sys

    print(f"error: {error}", file=sys.stderr, flush=True)
    return exit_code(error)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word``, when one is close enough to be the likely typo."""
    import difflib

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key(key: str, allowed: Iterable[str], section: str = "") -> ConfigError:
    """``unknown key 'bit'; did you mean 'bits'?``, or the allowed keys when none is close.

    ``key`` is as the user wrote it; its first part below ``section`` (``lrr`` of
    ``optim.lrr`` in section ``optim``) is matched against the ``allowed`` names of the section.
    """
    name = (key.removeprefix(f"{section}.") if section else key).split(".")[0]
    prefix = f"{section}." if section else ""
    guess = did_you_mean(name, allowed)
    if guess is not None:
        return ConfigError(f"unknown key '{key}'; did you mean '{prefix}{guess}'?")
    return ConfigError(
        f"unknown key '{key}'; allowed: {', '.join(prefix + a for a in sorted(allowed))}"
    )
