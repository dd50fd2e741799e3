"""What a job says while it works: timestamped log lines, and progress that suits where they go.

Every rule sends a job's stderr to its log file (``logs/...``). There a tqdm bar is thousands of
carriage-return frames on one line, and a log record without a time says nothing about where
the hours went. So the CLI configures logging once per process (``configure_logging``: time,
level, logger, message on stderr), and long loops report through ``progress``: a tqdm bar on a
terminal, otherwise one log line per ``every_percent`` of the work (our choice: every 10 %)
with the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("amdiff.progress")


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped records of every amdiff logger (and the libraries') on stderr, once."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)


def on_terminal() -> bool:
    """Whether stderr is a terminal (a person watching), not a job's log file or a pipe."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed stream
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, initial: int = 0, every_percent: float = 10.0,
             leave: bool = True):
    """A tqdm bar on a terminal, log lines elsewhere, nothing when not ``enabled``.

    Used like tqdm: iterate over it, or call ``update(n)`` and ``close()``; ``set_postfix``
    adds its values to the next log line.
    """
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if on_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LoggedProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                          every_percent=every_percent)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LoggedProgress:
    """Progress as log lines: one when another ``every_percent`` of ``total`` is done, and at the end."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every_percent: float = 10.0):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._start = initial
        self.every = float(every_percent)
        self._logged_step = self._step(initial)
        self._logged_n = initial
        self._t0 = time.monotonic()
        self._postfix = ""
        self._closed = False

    def _step(self, n: int) -> int:
        if not self.total:
            return 0
        return int(100.0 * n / self.total // self.every)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self._postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        step = self._step(self.n)
        if step > self._logged_step:
            self._logged_step = step
            self._log()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._logged_n and (self.total is None or self.n != self.total):
            self._log()   # no total, or stopped between two lines: say where

    def _log(self) -> None:
        self._logged_n = self.n
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start
        if self.total:
            left = (self.total - self.n) * elapsed / done if done > 0 else float("nan")
            eta = _duration(left) if left == left else "?"
            line = (f"{self.desc}: {100.0 * self.n / self.total:3.0f}% ({self.n}/{self.total} {self.unit}), "
                    f"{_duration(elapsed)} elapsed, {eta} left")
        else:
            line = f"{self.desc}: {self.n} {self.unit}, {_duration(elapsed)} elapsed"
        log.info("%s%s", line, f", {self._postfix}" if self._postfix else "")
