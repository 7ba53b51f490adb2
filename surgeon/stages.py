"""Timing the pipeline's stages, with a progress line for any that runs long.

`Stages` times trace → propagate → rank → plan → rebuild → check; a stage still running after
`delay` seconds gets a rich progress line (on stderr, only when it is a terminal, unless asked),
so short surgeries print nothing and long ones are not silent.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["Stages"]


class Stages:
    """Seconds spent per stage (`seconds`), and progress for slow ones.

    Example:
        >>> stages = Stages(show=False)
        >>> with stages.stage("trace"):
        ...     graphs = trace(model, inputs)
        >>> stages.seconds["trace"]
    """

    def __init__(self, *, show: bool | None = None, delay: float = 1.0) -> None:
        self.show = sys.stderr.isatty() if show is None else show
        self.delay = delay
        self.seconds: dict[str, float] = {}
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def _line(self, name: str, total: int | None = None) -> None:
        with self._lock:
            if self._progress is None:
                self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                          MofNCompleteColumn(), TimeElapsedColumn(),
                                          console=Console(stderr=True), transient=False)
                self._progress.start()
            if name not in self._tasks:
                self._tasks[name] = self._progress.add_task(f"surgeon: {name}", total=total)

    @contextmanager
    def stage(self, name: str, *, total: int | None = None) -> Iterator[Stages]:
        """Time the block as stage `name` (`total`: steps it will `advance` through)."""
        timer = threading.Timer(self.delay, self._line, args=(name, total)) if self.show else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        start = time.perf_counter()
        try:
            yield self
        finally:
            if timer is not None:
                timer.cancel()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            with self._lock:
                if name in self._tasks:
                    task = self._progress.tasks[self._tasks[name]]
                    self._progress.update(task.id, completed=task.total or 1, total=task.total or 1)

    def advance(self, name: str) -> None:
        """One step of stage `name` done (calibration batches)."""
        with self._lock:
            if name in self._tasks:
                self._progress.advance(self._tasks[name])

    def close(self) -> None:
        """Stop the progress display, if one was shown."""
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
