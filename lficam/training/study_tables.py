"""Optuna's tables in a study database that several sweep workers open at the same moment.

optuna 2.10's ``RDBStorage`` creates its schema with SQLAlchemy's ``create_all`` and then inserts its version
row, neither guarded against another process doing the same: three workers started at once against a new
PostgreSQL database lose the race with "duplicate key value violates unique constraint" (``CREATE TYPE
studydirection``) and end. :func:`create_study_tables` creates the schema before the sweeper does, trying again
after a lost race, when the winner's tables are there.
"""

from __future__ import annotations

import random
import time
from typing import Any

ATTEMPTS = 5


def create_study_tables(storage: Any) -> None:
    """Make sure Optuna's tables exist in ``storage`` (an SQLAlchemy URL; None or SQLite: nothing to share)."""
    if storage is None or str(storage).startswith("sqlite"):
        return
    import optuna
    import sqlalchemy

    for attempt in range(ATTEMPTS):
        try:
            optuna.storages.RDBStorage(str(storage)).remove_session()
            return
        except sqlalchemy.exc.SQLAlchemyError:  # another worker is creating the same tables
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.5 + random.random())
