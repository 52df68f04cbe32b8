"""train.py's command line, checked before Hydra runs it, so that a mistake costs one line.

* an unknown key or group option is refused with the likely intended one (qat.orchestration.
  overrides) before Hydra creates anything;
* ``--cfg job`` validates the config (every cell of a sweep) as a run would, then prints it;
* whatever Hydra itself still refuses while composing (a bad override syntax it lets through,
  say) is printed as its first line, with the config-error exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from qat.errors import CONFIG_EXIT, ConfigError, QatError, report

# Flags that pick another config or print help: the checks against conf/ do not apply.
_OTHER_CONFIG = ("config_path", "config_name", "config_dir")
_NO_RUN = ("help", "hydra_help", "info", "shell_completion")


def check_command_line(argv: Sequence[str]) -> None:
    """Exit with one ``error:`` line (code 2) if ``argv``'s overrides name a key or option the
    config does not have, or, with ``--cfg``, if the config they compose is invalid."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return  # a flag Hydra does not know: its own parser says so
    if any(getattr(args, name, None) for name in (*_OTHER_CONFIG, *_NO_RUN)):
        return
    try:
        from qat.orchestration.overrides import check_overrides

        check_overrides(args.overrides)
        if args.cfg in ("job", "all"):
            from qat.orchestration.grid import expand_grid

            expand_grid(args.overrides)  # every cell validated, as a launch would
    except QatError as error:
        raise SystemExit(report(error)) from None


def one_line_hydra_errors() -> None:
    """Make Hydra report its composition errors as ``error: <first line>`` with exit code 2
    (its default: several lines and exit 1); errors of the task itself are left as they are.
    ``HYDRA_FULL_ERROR=1`` still shows Hydra's full trace."""
    from hydra._internal import utils

    original = utils.run_and_report

    def run_and_report(func: Any) -> Any:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        def composed() -> Any:
            try:
                return func()
            except (HydraException, OmegaConfBaseException) as error:
                if utils._is_env_set("HYDRA_FULL_ERROR"):
                    raise
                report(ConfigError(_first_line(error)))
                raise SystemExit(CONFIG_EXIT) from None

        return original(composed)

    utils.run_and_report = run_and_report


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def main_with_checks(main: Any) -> None:
    """Run the Hydra ``main`` of train.py after the checks above."""
    check_command_line(sys.argv[1:])
    one_line_hydra_errors()
    main()
