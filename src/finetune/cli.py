"""Command-line entry: Hydra's own config errors become one line and exit code 2, like ours.

Hydra reports a bad command line (an unknown config group option, an unknown key, a value of the
wrong type, an override it cannot parse) in several lines and exits with 1. `main` asks Hydra to
raise those errors instead (HYDRA_FULL_ERROR), and turns the ones raised while composing the config
into `error: <one line>` and exit code 2. Errors raised inside the task function itself are left
alone (our input errors are reported there by `finetune.run.run_and_report`; anything else is a bug
and keeps its traceback). FINETUNE_DEBUG=1 shows the full traceback of a config error too.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

_OURS = "FINETUNE_SET_HYDRA_FULL_ERROR"
_GROUP_NULL = "Config group override must be a string or a list"  # marks HYDRA_FULL_ERROR as set by us (child processes inherit both)

# Hydra's multi-line messages end with advice that does not apply to a one-line report.
_NOISE = re.compile(r"^(Config search path:|\s+provider=|See https://hydra\.cc|Set the environment variable HYDRA_FULL_ERROR)")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in str(text).splitlines() if line.strip() and not _NOISE.match(line)]


def _valid_keys(object_type) -> list[str]:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def describe(err: BaseException) -> str:
    """One line for a config-composition error from Hydra or OmegaConf."""
    if isinstance(err, MissingConfigException):
        missing = getattr(err, "missing_cfg_file", None) or ""
        group, _, option = missing.rpartition("/")
        options = getattr(err, "options", None)
        if group and options:
            return f"unknown {group} '{option}' ({group}={option}); choose one of: {', '.join(options)}"
        return " ".join(_lines(err)) or f"config '{missing}' not found"
    if isinstance(err, OverrideParseException):
        override = getattr(err, "override", "")
        reason = (_lines(getattr(err, "message", "") or err) or [""])[-1]
        return f"cannot parse the command-line override '{override}': {reason} (write key=value, e.g. trainer.batch_size=16)"
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        full_key = getattr(cause, "full_key", None) or ""
        valid = _valid_keys(getattr(cause, "object_type", None))
        parent, _, name = full_key.rpartition(".")
        message = f"unknown config key '{full_key}'"
        close = difflib.get_close_matches(name, valid, n=1)
        if close:
            message += f" (did you mean '{(parent + '.') if parent else ''}{close[0]}'?)"
        if valid:
            message += f"; valid keys{(' in ' + parent) if parent else ''}: {', '.join(valid)}"
        return message
    if isinstance(cause, ValidationError):
        full_key = getattr(cause, "full_key", None)
        reason = (_lines(cause) or [""])[0]
        return f"config key '{full_key}': {reason}" if full_key else reason
    return "; ".join(_lines(err)) or type(err).__name__


def _raised_in(err: BaseException, code) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


def main(hydra_main) -> None:
    """Call a @hydra.main function; report config-composition errors in one line, exit code 2."""
    if "HYDRA_FULL_ERROR" not in os.environ or os.environ.get(_OURS):
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ[_OURS] = "1"
        user_wants_full = False
    else:
        user_wants_full = True
    task_function = getattr(hydra_main, "__wrapped__", None)
    try:
        hydra_main()
    except ValueError as err:  # Hydra raises a bare ValueError for `group=null` (e.g. peft=null)
        if not str(err).startswith(_GROUP_NULL) or user_wants_full or os.environ.get("FINETUNE_DEBUG"):
            raise
        from finetune.config import PROJECT_ROOT

        nulls = [arg for arg in sys.argv[1:] if re.fullmatch(r"\w+=(null|None)", arg)
                 and (PROJECT_ROOT / "configs" / arg.split("=", 1)[0]).is_dir()]
        group = nulls[0].split("=", 1)[0] if nulls else "<group>"
        print(f"error: '{nulls[0] if nulls else group + '=null'}' cannot unset a config group on the command line: "
              f"leave it out (the default applies) or write ~{group}", file=sys.stderr)
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as err:
        inside_task = task_function is not None and _raised_in(err, task_function.__code__)
        if inside_task or user_wants_full or os.environ.get("FINETUNE_DEBUG"):
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        sys.exit(2)
