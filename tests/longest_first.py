"""Run the test modules that take longest first, so that the workers of ``make test`` end together.

pytest-xdist hands the tests out in collection order. In file order, a minute-long test that starts last (the
short training of tests/test_train.py) kept one worker busy for a minute after the other had run out of tests.
Started first, the long modules finish while the many short tests are still left to even out the workers'
ends. Each module keeps its tests together, in their own order (a module's fixtures are set up once a worker).

``tests/module_seconds.json`` holds each module's seconds (all phases, summed over its tests) from a whole
run; a module it does not name runs after those it does, in file order. It only orders the tests: a stale
file costs time, never a result. Refresh it with ``make test PYTEST_ARGS=--record-module-seconds``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

SECONDS = Path(__file__).with_name("module_seconds.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-module-seconds",
        action="store_true",
        help=f"write each test module's seconds in this run to {SECONDS.name} (the order of the next runs)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    seconds = json.loads(SECONDS.read_text()) if SECONDS.is_file() else {}
    first_seen = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path.name, index)
    # stable: a module's tests keep their order; unknown modules keep theirs after the known ones
    items.sort(key=lambda item: (-seconds.get(item.path.name, 0.0), first_seen[item.path.name]))


class _Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(
        self, report: pytest.TestReport
    ) -> None:  # the controller sees every worker's
        self.seconds[Path(report.fspath).name] += report.duration

    def pytest_sessionfinish(self) -> None:
        # the modules this run ran replace their entries; the others keep theirs (a run of a few modules)
        known = json.loads(SECONDS.read_text()) if SECONDS.is_file() else {}
        known.update({name: round(value, 1) for name, value in self.seconds.items()})
        ordered = dict(sorted(known.items(), key=lambda kv: -kv[1]))
        SECONDS.write_text(json.dumps(ordered, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--record-module-seconds") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(), "module-seconds-recorder")
