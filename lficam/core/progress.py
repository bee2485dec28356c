"""Progress of a long command made of stages of known relative cost, with an estimate of the time left.

In a terminal: one rich progress bar whose line names the running stage and the time left. Anywhere else
(a log file, a batch job, a pipe): one log line per finished stage with its time and the time left. The
estimate is the elapsed time scaled by the cost still to come: time left = elapsed · (left cost / done cost).

    with StageProgress({"load": 1, "curves": 20}) as progress:
        with progress.stage("load"):
            ...
    progress.wall_times  # {"load": 0.4, "curves": 9.1, "total": 9.5} in seconds
    progress.cpu_times   # the same in this process's CPU seconds (all threads)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("lficam")


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StageProgress:
    """Stages → cost (any unit, e.g. images through the model); ``terminal=None`` asks rich whether stdout
    is a terminal. A stage not in ``costs`` costs nothing."""

    def __init__(self, costs: dict[str, float], terminal: bool | None = None) -> None:
        self.costs = dict(costs)
        self.total = sum(self.costs.values()) or 1.0
        self.done = 0.0
        self.wall_times: dict[str, float] = {}
        self.cpu_times: dict[str, float] = {}
        self._terminal = terminal
        self._bar: Any = None
        self._task: Any = None
        self._start = self._start_cpu = 0.0

    def __enter__(self) -> StageProgress:
        from rich.console import Console

        self._start, self._start_cpu = time.perf_counter(), time.process_time()
        terminal = Console().is_terminal if self._terminal is None else self._terminal
        if terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[left]}"),
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total, left="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_times["total"] = time.perf_counter() - self._start
        self.cpu_times["total"] = time.process_time() - self._start_cpu
        if self._bar is not None:
            self._bar.stop()

    def left(self) -> float | None:
        """Seconds left, estimated from the stages done so far (None before any cost is done)."""
        if self.done <= 0:
            return None
        return (time.perf_counter() - self._start) * (self.total - self.done) / self.done

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.update(self._task, description=name)
        began, began_cpu = time.perf_counter(), time.process_time()
        yield
        took = time.perf_counter() - began
        self.wall_times[name] = self.wall_times.get(name, 0.0) + took
        self.cpu_times[name] = self.cpu_times.get(name, 0.0) + time.process_time() - began_cpu
        self.done = min(self.total, self.done + self.costs.get(name, 0.0))
        left = self.left()
        about = "" if left is None else f"about {duration(left)} left"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, left=about)
        else:
            log.info(
                "%s: done in %s (%.0f %%)%s",
                name,
                duration(took),
                100 * self.done / self.total,
                f"; {about}" if about else "",
            )
