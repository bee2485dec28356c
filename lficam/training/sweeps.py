"""What a sweep needs from Hydra and from a job: ``${hydra:...}`` values before the first job, a study storage
checked before the first trial, and a failure that does not end the sweep.

Hydra sets :class:`~hydra.core.hydra_config.HydraConfig` only when a job starts (``run_job``), yet it resolves
the multirun's own values before that: the callbacks' arguments, the sweeper's (``hydra.sweeper.storage``) and
``hydra.sweep.dir``. Ours derive from ``paths.root_dir: ${hydra:runtime.cwd}``, whose resolver reads
HydraConfig, so without :class:`HydraConfigBeforeJobs` every ``-m`` whose paths are not given on the command
line failed with "HydraConfig was not set" (hydra#3427, fixed in Hydra after 1.3.8 the same way).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lficam.core.errors import UserError, os_error_reason
from lficam.training.study_tables import create_study_tables

EXIT_USER_ERROR = 2
# seconds a network database may take to answer before the search is refused (the drivers wait minutes)
CONNECT_TIMEOUT = 10
# by driver, as their keyword differs (pg8000 calls it timeout)
_CONNECT_ARGS = {name: {"connect_timeout": CONNECT_TIMEOUT} for name in ("psycopg2", "mysqldb", "pymysql")}
_DRIVERS = {"postgresql": "psycopg2-binary", "mysql": "mysqlclient"}


def failed_sweep_job(error: Exception) -> float:
    """What a failed job of a sweep hands back so that the sweep goes on.

    Hydra's grid sweeper ignores results but stops at the end of a batch when a job raised, so it gets NaN.
    Sweepers that read results get the error itself: the Optuna sweeper records a FAIL trial for an exception
    and goes on (``max_failure_rate``), whereas a NaN result would make it crash (optuna 2.10 refuses NaN).
    """
    from hydra.core.hydra_config import HydraConfig

    if str(HydraConfig.get().sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return float("nan")
    raise error


# ------------------------------------------------------------------------------ Hydra's config before a job


def install_hydra_config(config: DictConfig) -> bool:
    """Let ``${hydra:...}`` resolve against ``config`` (a composed config with its ``hydra`` node) when Hydra
    has not set HydraConfig yet; returns whether it was set here (and so is this caller's to take back)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return False
    readonly = OmegaConf.is_readonly(config.hydra)
    HydraConfig.instance().set_config(config)
    OmegaConf.set_readonly(config.hydra, readonly)  # set_config freezes the node; Hydra still fills it in
    return True


def uninstall_hydra_config() -> None:
    """Take back what :func:`install_hydra_config` set (Hydra's jobs set and restore their own)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


@contextmanager
def hydra_config_of(config: DictConfig) -> Iterator[None]:
    """``${hydra:...}`` values of ``config`` resolvable inside the block (Hydra's own setting, if any, wins).

    ``${now:...}`` caches its value on the config, so a run folder resolved here is the one Hydra makes."""
    installed = install_hydra_config(config)
    try:
        yield
    finally:
        if installed:
            uninstall_hydra_config()


class HydraConfigBeforeJobs(Callback):
    """A Hydra callback that sets HydraConfig to the multirun's config from its start to its end, so that the
    sweeper, the launcher and ``hydra.sweep.dir`` can resolve ``${hydra:runtime.cwd}`` (``paths.*``)."""

    def __init__(self) -> None:
        self._installed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._installed = install_hydra_config(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._installed:
            uninstall_hydra_config()
            self._installed = False


# ---------------------------------------------------------------------------------- the Optuna study's storage


class StudyStorage(Callback):
    """A Hydra callback that checks an Optuna search before its first trial: ``hydra.sweeper.n_trials`` at
    least 1, and a ``hydra.sweeper.storage`` that SQLAlchemy can open (an SQLite file's folder is created, as
    SQLite creates the file but not its folder). A mistake prints one sentence and exits with code 2 (Hydra
    turns a callback's exception into a warning, so it is a SystemExit)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            with hydra_config_of(config):
                sweeper = config.hydra.sweeper
                check_n_trials(sweeper.get("n_trials"))
                open_storage(sweeper.get("storage"))
                # workers that start together must not race to create Optuna's tables
                create_study_tables(sweeper.get("storage"))
        except UserError as error:
            print(f"Error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None


def check_n_trials(n_trials: Any) -> None:
    """A search runs at least one trial (with none, the sweeper fails after the search: "Record does not
    exist", as the study has no best trial)."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise UserError(
            f"hydra.sweeper.n_trials={n_trials} cannot run a search: give the number of trials to run, at least "
            "1 (hydra.sweeper.n_trials=20)."
        )


def open_storage(storage: Any) -> None:
    """Check that the study's database ``storage`` (an SQLAlchemy URL; ``None``: in memory) can be opened:
    its dialect known, its driver installed, its server reachable; an SQLite file's folder is created."""
    if storage is None:
        return
    import sqlalchemy
    from sqlalchemy.engine import make_url

    examples = "e.g. sqlite:///outputs/optuna.db or postgresql://user:password@host/database"
    try:
        url = make_url(str(storage))
        dialect = url.get_dialect()
    except sqlalchemy.exc.ArgumentError:  # not a URL, or a dialect SQLAlchemy does not have
        raise UserError(
            f"hydra.sweeper.storage={storage} is not a database URL SQLAlchemy can open: give one, {examples}."
        ) from None
    shown = url.render_as_string(hide_password=True)
    try:
        dialect.dbapi()
    except ImportError as missing:
        backend = url.get_backend_name()
        install = (
            f"pip install {_DRIVERS[backend]}" if backend in _DRIVERS else f"the Python driver for {backend}"
        )
        raise UserError(
            f"hydra.sweeper.storage={shown} needs a database driver that is not installed ({missing}): install "
            f"it ({install}) or use sqlite:///<file>.db, which needs none."
        ) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        _make_folder(Path(url.database).parent, shown)
    engine = sqlalchemy.create_engine(url, connect_args=_CONNECT_ARGS.get(url.get_driver_name(), {}))
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0].rstrip(".")
        raise UserError(
            f"hydra.sweeper.storage={shown}: cannot connect to the study's database ({reason}); start the "
            "database server or give a URL that reaches it (sqlite:///<file>.db needs no server)."
        ) from None
    finally:
        engine.dispose()


def _make_folder(folder: Path, shown: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"hydra.sweeper.storage={shown}: the folder {str(folder)!r} for the study's database cannot be "
            f"made ({os_error_reason(error)}); give a file in a folder you can write."
        ) from None
