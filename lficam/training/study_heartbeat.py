"""A trial whose sweep worker dies is marked failed and run again by another worker.

Optuna (2.10) does this in ``study.optimize``: with an ``RDBStorage`` given ``heartbeat_interval``, a thread
records the running trial's heartbeat, each new trial first fails the trials whose heartbeat is older than
``grace_period`` (``fail_stale_trials``), and a ``RetryFailedTrialCallback`` puts a copy of each such trial back
in the queue. hydra-optuna-sweeper (1.3.0) does none of it: it drives the study by ``ask``/``tell`` (no
heartbeat thread, no stale check) and hands Optuna the storage as a URL (no heartbeat settings), so a worker
killed mid-trial left its trial RUNNING for ever. :class:`TrialHeartbeat`, a Hydra callback, adds the three
to the sweeper's process for the length of the search.

Optuna 2.10 ages a heartbeat as ``(now - heartbeat).seconds`` with ``now`` read from the database before the
running trials are: a heartbeat another worker records in between is newer than ``now``, and the negative age's
``.seconds`` is 86 399, so a trial just asked for read as stale and was failed under its worker ("Cannot change
attributes of finished trial" at its ``tell``). :class:`HeartbeatStorage` ages heartbeats with
``total_seconds()``: a heartbeat newer than the check is fresh.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from optuna.storages import RDBStorage, RetryFailedTrialCallback, fail_stale_trials
from optuna.storages._rdb import models  # optuna < 3 is pinned (hydra-optuna-sweeper 1.3.0)
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState
from sqlalchemy import func

from lficam.training.sweeps import hydra_config_of

log = logging.getLogger("lficam")


class TrialHeartbeat(Callback):
    """Heartbeats for the sweeper's trials every ``interval`` seconds; a trial silent for ``grace_period``
    seconds is failed by the next worker that asks for a trial, and run again up to ``max_retry`` times."""

    def __init__(self, interval: int = 10, grace_period: int | None = None, max_retry: int = 1) -> None:
        self.interval, self.grace_period, self.max_retry = interval, grace_period, max_retry
        self._undo: list[tuple[Any, str, Any]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # a database server's study; not an in-memory one (no other worker) nor SQLite (a heartbeat thread
        # writing beside the sweeper would meet "database is locked")
        with hydra_config_of(config):  # the storage URL may name ${paths...}
            storage = str(config.hydra.sweeper.get("storage") or "")
        if storage and not storage.startswith("sqlite"):
            self._install()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def _install(self) -> None:
        create_study, ask = optuna.create_study, optuna.study.Study.ask
        settings = {
            "heartbeat_interval": self.interval,
            "grace_period": self.grace_period,
            "failed_trial_callback": RetryFailedTrialCallback(max_retry=self.max_retry),
        }

        def create_with_heartbeat(*args: Any, storage: Any = None, **kwargs: Any) -> Any:
            if isinstance(storage, str):
                storage = HeartbeatStorage(storage, **settings)
            return create_study(*args, storage=storage, **kwargs)

        def ask_with_heartbeat(study: Any, *args: Any, **kwargs: Any) -> Any:
            if not study._storage.is_heartbeat_enabled():
                return ask(study, *args, **kwargs)
            try:  # a dead worker's trial: failed, and a copy queued (asked first below)
                fail_stale_trials(study)
            except RuntimeError as error:
                # optuna 2.10: two workers that find the same stale trial at once both try to fail it; the
                # second one's update is refused, and the first has failed it and queued its copy already
                if "has already finished" not in str(error):
                    raise
            trial = ask(study, *args, **kwargs)
            threading.Thread(
                target=_beat, args=(study._storage, trial._trial_id, self.interval), daemon=True
            ).start()
            return trial

        self._patch(optuna, "create_study", create_with_heartbeat)
        self._patch(optuna.study.Study, "ask", ask_with_heartbeat)


class HeartbeatStorage(RDBStorage):
    """Optuna's database storage whose stale check counts a heartbeat newer than the check as fresh."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's running trials whose last heartbeat is more than the grace period (default: two
        heartbeat intervals) older than the database's clock."""
        grace_period = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        with _create_scoped_session(self.scoped_session) as session:
            # the database's clock, as the heartbeats are written; PostgreSQL gives it with a time zone and
            # stores the heartbeats without one, in the session's zone
            now = session.execute(func.now()).scalar().replace(tzinfo=None)
            beats = (
                session.query(models.TrialModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                .join(
                    models.TrialHeartbeatModel,
                    models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id,
                )
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
        return [trial_id for trial_id, beat in beats if (now - beat).total_seconds() > grace_period]


def _beat(storage: Any, trial_id: int, interval: float) -> None:
    """Record the trial's heartbeat until it has finished (the sweeper's ``tell``)."""
    while not storage.get_trial(trial_id).state.is_finished():
        storage.record_heartbeat(trial_id)
        time.sleep(interval)
