"""The command line: every lficam command is a Hydra app that runs through one wrapper.

    lficam-train   [key=value ...]    same as  python train.py
    lficam-eval    [key=value ...]    same as  python eval.py
    lficam-explain [key=value ...]    same as  python -m lficam.explain
    lficam-export  [key=value ...]    same as  python -m lficam.export

The configs ship inside the package (``lficam/conf`` links to the repository's ``conf/``; the wheel carries the
files), so the apps find them as ``pkg://lficam.conf`` from any folder, installed or not.

Hydra runs code both before a task (composing the config, making the run folder) and around it, so the wrapper
has two layers with one contract:

* :func:`run` wraps the whole app. A mistake Hydra finds before the task starts (an unknown key or option, bad
  override syntax, a run folder that cannot be written) ends with its message and exit code 2, Ctrl-C with 130;
  a misspelt key is answered with the nearest existing one (``trainer.max_epoch`` → ``trainer.max_epochs``).
* :func:`guarded` wraps the task body. A :class:`~lficam.core.errors.UserError`, or a config value that Hydra or
  OmegaConf cannot build into an object (``instantiate`` of a bad value, an interpolation that does not
  resolve), ends with one sentence and exit code 2; W&B is closed whatever happens; Ctrl-C says how to resume;
  a ``+key`` override that nothing reads is named in a warning.

Exit codes: 0 done, 1 a bug (its traceback is kept), 2 a user's mistake, 130 interrupted (128 + SIGINT, the
shell's convention), 143 stopped by SIGTERM (128 + SIGTERM: a batch system's stop or time limit).
``HYDRA_FULL_ERROR=1`` shows the traceback of a config error too.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig

from lficam.core.errors import UserError, os_error_reason
from lficam.training.sweeps import failed_sweep_job

log = logging.getLogger("lficam")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
VERSION_BASE = "1.3"
CONFIG_PACKAGE = "lficam.conf"
_FULL_ERROR = "HYDRA_FULL_ERROR"
# The user's own HYDRA_FULL_ERROR, one entry per app running (run() sets the variable to 1 so that Hydra hands
# its errors to us instead of printing them and exiting with 1; the task itself runs under the user's value).
_user_full_error: list[str | None] = []

T = TypeVar("T")
Phrase = Callable[[BaseException, list[str]], "str | None"]


# --------------------------------------------------------------------------------------------- the app layer


def run(app: Callable[[], Any], argv: Sequence[str] | None = None, phrase: Phrase | None = None) -> int:
    """Run the ``@hydra.main`` function ``app`` with ``argv`` (default: the process's arguments) and return its
    exit code. ``phrase`` words an app's own sentence for a config error Hydra raises before the task starts
    (``None`` from it: the generic wording)."""
    from hydra.core.hydra_config import HydraConfig

    args = list(sys.argv[1:] if argv is None else argv)
    saved_argv = sys.argv
    # a multirun sets HydraConfig for its whole length (lficam.training.sweeps.HydraConfigBeforeJobs); one that ends with
    # an error must not leave it behind for what runs next in this process
    saved_hydra_config = HydraConfig.instance().cfg
    _user_full_error.append(os.environ.get(_FULL_ERROR))
    os.environ[_FULL_ERROR] = "1"
    sys.argv = [saved_argv[0] if saved_argv else "lficam", *args]
    try:
        app()
    except SystemExit as done:
        return _exit_code(done)
    except KeyboardInterrupt:  # before the task started, or outside it: nothing to resume
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if _user_full_error[-1] == "1":
            raise
        message = (
            (phrase(error, args) if phrase else None)
            or nearest_key_message(error, args)
            or startup_message(error)
        )
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        sys.argv = saved_argv
        HydraConfig.instance().cfg = saved_hydra_config
        user_value = _user_full_error.pop()
        if user_value is None:
            os.environ.pop(_FULL_ERROR, None)
        else:
            os.environ[_FULL_ERROR] = user_value
    return 0


def _exit_code(done: SystemExit) -> int:
    if done.code is None or isinstance(done.code, int):
        return int(done.code or 0)
    print(done.code, file=sys.stderr)  # SystemExit("a sentence") prints it and exits with 1, as Python does
    return 1


def startup_message(error: BaseException) -> str | None:
    """What to print for an error Hydra raised before the task ran, or ``None`` for a bug."""
    from hydra.errors import CompactHydraException, HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):  # a launcher of ours refused the sweep (lficam.cli.slurm_launcher)
        return f"Error: {error}"
    if isinstance(error, CompactHydraException):  # Hydra's own words: the key, the choices, the fix
        cause = error.__cause__
        extra = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
        return f"{error}{extra}"
    written = _os_error_in(error)
    if written is not None:  # Hydra makes the run folder, its .hydra/ and the log file before the task
        path = f" {str(written.filename)!r}" if written.filename else ""
        return (
            f"Error: the run folder cannot be written:{path} ({os_error_reason(written)}); give a folder you "
            "can write with hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m)."
        )
    if isinstance(error, OmegaConfBaseException):
        return f"Error: {config_value_sentence(error)}"
    if isinstance(error, HydraException):
        return f"Error: {_first_line(error)}."
    return None


def nearest_key_message(error: BaseException, argv: Sequence[str] = ()) -> str | None:
    """For Hydra's "Could not override 'trainer.max_epoch'" of a misspelt key: the existing key of that level
    nearest to it (Hydra's advice, ``+trainer.max_epoch=1``, adds a key that fails later or that nothing reads),
    or ``None`` when no key is close (Hydra's own words then)."""
    import difflib

    from hydra.errors import CompactHydraException

    bad = re.match(r"Could not override '([^']+)'\.\nTo append to your config use \+[^=\s]+=(.*)", str(error))
    cause = error.__cause__
    parent, key = getattr(cause, "parent_node", None), getattr(cause, "key", None)
    full = str(getattr(cause, "full_key", "") or "")
    if not (isinstance(error, CompactHydraException) and bad and isinstance(parent, DictConfig) and key):
        return None
    written, key = bad.group(1), str(key)
    if not (full.endswith(key) and written.startswith(full)):
        return None
    rest = written[len(full) :]  # the part after a misspelt group name: trainr.max_epochs → .max_epochs
    keys = [str(k) for k in parent if k != "hydra"]
    close = [k for k in difflib.get_close_matches(key, keys, n=3, cutoff=0.6) if _has(parent, k + rest)]
    if not close:
        return None
    nearest = full[: len(full) - len(key)] + close[0] + rest
    # the value as written (Hydra's line has one value of a sweep's list)
    value = next((a.split("=", 1)[1] for a in argv if a.lstrip("+~").startswith(f"{written}=")), bad.group(2))
    return (
        f"Error: The config has no key {written!r}: did you mean {nearest}={value} (--cfg job prints the "
        "config's keys)?"
    )


def _has(config: Any, dotted: str) -> bool:
    """Whether ``config`` has the key ``dotted`` (a value that does not resolve yet, ``${hydra:...}``, counts)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    missing = object()
    try:
        return OmegaConf.select(config, dotted, default=missing, throw_on_missing=False) is not missing
    except InterpolationResolutionError:
        return True


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The OSError in an error's chain (the logging module wraps a log file it cannot open in a ValueError)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def flat_options_phrase(noun: str, options: Callable[[], list[str]], example: str) -> Phrase:
    """One sentence for the config errors of an app whose options are one flat list (explain, export)."""

    def phrase(error: BaseException, argv: list[str]) -> str | None:
        from hydra.errors import CompactHydraException, OverrideParseException

        text = str(error)
        if isinstance(error, OverrideParseException):
            bad = re.match(r"Error parsing override '(.*)'", text)
            got = bad.group(1) if bad else " ".join(argv)
            return f"Error: Expected key=value arguments, got {got!r}; e.g. {example}."
        if not isinstance(error, CompactHydraException):
            return None
        unknown = re.match(r"Could not override '([^']+)'", text)
        if unknown:
            return (
                f"Error: Unknown {noun} option {unknown.group(1)!r}: choose among {', '.join(options())}; "
                f"write them as key=value, e.g. {example}."
            )
        detail = "; ".join(_meaningful_lines(error) + _meaningful_lines(error.__cause__))
        return (
            f"Error: Cannot use the arguments {' '.join(argv)!r} ({detail}); write them as key=value, "
            f"e.g. {example}."
        )

    return phrase


# -------------------------------------------------------------------------------------------- the task layer


def guarded(
    body: Callable[[], T],
    *,
    run_dir: str | None = None,
    errors_to_log: bool = True,
    on_interrupt: Callable[[], str] | None = None,
) -> T | float:
    """Run a Hydra task's body: a user's mistake ends with one sentence and exit code 2, W&B is closed, Ctrl-C
    ends with what ``on_interrupt`` says and exit code 130 (SIGTERM, once Lightning's loops stop on it: the
    same, and 143), and unread ``+key`` overrides are warned about.

    ``run_dir`` is named in the error sentence (what was written before the error stays there);
    ``errors_to_log`` sends the sentence to the log (the run's log file too) instead of ``Error: …`` on stderr.
    In a sweep (``-m``) a failed job does not end the sweep: it hands :func:`lficam.training.sweeps.failed_sweep_job`'s
    value back instead.
    """
    multirun = _multirun()
    user_full_error = _user_full_error[-1] if _user_full_error else os.environ.get(_FULL_ERROR)
    _set_full_error(user_full_error)  # the task's own subprocesses (DDP ranks) see the user's setting
    bug = False
    try:
        warn_unread_overrides()
        return body()
    except Exception as error:
        message = None if user_full_error == "1" else user_message(error)
        if message is None:  # a bug: its traceback is kept (in a sweep, in the job's log)
            if not multirun:
                bug = True  # Hydra prints it as it always has (its traceback, exit code 1)
                raise
            log.exception("This sweep job failed; the sweep goes on (run folder %s).", run_dir)
            return failed_sweep_job(error)
        _say(message, run_dir, errors_to_log)
        if multirun:  # one failed trial must not end the sweep
            return failed_sweep_job(error)
        raise SystemExit(EXIT_USER_ERROR) from None
    except BaseException as stop:
        if not interrupted(stop):
            raise
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:
            print(on_interrupt() if on_interrupt else "Interrupted.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_TERMINATED if terminated(stop) else EXIT_INTERRUPTED) from None
    finally:
        close_wandb()
        if _user_full_error and not bug:  # what Hydra raises after the task (a later job's config) is run()'s
            _set_full_error("1")


def interrupted(stop: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the exit Lightning makes after it caught one inside ``fit``/``test``;
    or SIGTERM (:func:`terminated`)."""
    return (
        isinstance(stop, KeyboardInterrupt)
        or (isinstance(stop, SystemExit) and isinstance(stop.__context__, KeyboardInterrupt))
        or terminated(stop)
    )


def terminated(stop: BaseException) -> bool:
    """SIGTERM: Lightning's signal connector notes it (on SLURM with auto-requeue, after the requeue) and its
    loops stop at the next batch with ``SIGTERMException``, a ``SystemExit`` of code 0 that a batch system
    would read as success."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")  # loaded where Lightning ran
    return exceptions is not None and isinstance(stop, exceptions.SIGTERMException)


def user_message(error: BaseException) -> str | None:
    """The sentence for a user's mistake raised inside a task, or ``None`` for a bug."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, InstantiationException):
        if isinstance(error.__cause__, UserError):  # a constructor of ours refused a value: its own sentence
            return str(error.__cause__)
        return instantiation_sentence(error)
    if isinstance(error, OmegaConfBaseException):
        return config_value_sentence(error)
    if isinstance(error, HydraException):
        return f"{_first_line(error)}."
    return None


def instantiation_sentence(error: BaseException) -> str:
    """``instantiate`` could not build an object from the config: which config node, which class, why."""
    text = str(error)
    key = re.search(r"^full_key: (\S+)", text, re.MULTILINE)
    target = re.search(r"target '([^']+)'", text)
    cause = error.__cause__
    reason = f"{type(cause).__name__}: {_first_line(cause)}" if cause is not None else _first_line(error)
    reason = reason.rstrip(".")
    if key and target:
        what, values = f"{key.group(1)} ({target.group(1)})", f"the {key.group(1)}.* values"
    else:
        what = key.group(1) if key else target.group(1) if target else "an object"
        values = "its values"
    if text.startswith("Error locating target"):
        return f"Cannot build {what}: its _target_ cannot be imported ({reason}); check the class path."
    return f"Cannot build {what} from the config ({reason}); check {values} (--cfg job prints the composed config)."


def config_value_sentence(error: BaseException) -> str:
    """An OmegaConf error (a missing value, an interpolation that does not resolve, a value of the wrong type)."""
    from omegaconf.errors import MissingMandatoryValue

    key = getattr(error, "full_key", None) or ""
    if isinstance(error, MissingMandatoryValue):
        return f"The config value {key!r} is required (it is ???): set it on the command line, e.g. {key}=<value>."
    return f"The config value {key!r} cannot be used ({_first_line(error).rstrip('.')}); check it with --cfg job."


def warn_unread_overrides() -> list[str]:
    """Warn about every ``+key=value`` (or ``++``) override whose top-level key is not part of the app's config:
    nothing reads it, so it has no effect (a misspelt key, most likely). Returns the overrides warned about."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    try:
        unread = _unread_overrides(HydraConfig.get())
    except Exception:  # a warning must never stop a run
        log.debug("Could not check the + overrides.", exc_info=True)
        return []
    for line, top in unread:
        log.warning(
            "%s has no effect: nothing reads %r (the %s config has no top-level key of that name); "
            "check its spelling (--cfg job prints the config).",
            line,
            top,
            HydraConfig.get().job.config_name,
        )
    return [line for line, _ in unread]


def _unread_overrides(hydra_cfg: Any) -> list[tuple[str, str]]:
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    groups = set(hydra_cfg.runtime.choices)
    added = [
        o
        for o in parsed
        if (o.is_add() or o.is_force_add())
        and o.key_or_group not in groups
        and not o.key_or_group.startswith("hydra")
    ]
    if not added:
        return []
    # the config without these overrides: which top-level keys the app's config has on its own
    others = [o.input_line for o in parsed if o not in added]
    base = compose(config_name=hydra_cfg.job.config_name, overrides=others)
    tops = [(o.input_line, o.key_or_group.split(".")[0]) for o in added]
    return [(line, top) for line, top in tops if top not in base]


def close_wandb() -> None:
    """Finish the W&B run if one is open (else the next job of a sweep would log into it)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _say(message: str, run_dir: str | None, errors_to_log: bool) -> None:
    if errors_to_log:
        where = f" (the run folder {run_dir} keeps what was written before this error)" if run_dir else ""
        log.error("%s%s", message, where)
    else:
        print(f"Error: {message}", file=sys.stderr)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _set_full_error(value: str | None) -> None:
    if value is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = value


def _first_line(error: BaseException) -> str:
    lines = _meaningful_lines(error)
    return lines[0] if lines else type(error).__name__


def _meaningful_lines(error: BaseException | None) -> list[str]:
    """An error's lines without OmegaConf's ``full_key:``/``object_type=`` trailer and Hydra's search path."""
    if error is None:
        return []
    lines = []
    for line in str(error).splitlines():
        stripped = line.strip()
        if stripped.startswith(("Config search path", "See https://hydra.cc")):
            break
        if stripped and not stripped.startswith(("full_key:", "object_type=", "reference_type=")):
            lines.append(stripped)
    return lines
