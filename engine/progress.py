"""Progress output: the one place that decides how long work reports itself.

``progress_bar(...)`` takes tqdm's usual arguments. On a terminal it is a tqdm bar. Anywhere else
(a log file, a pipe, CI) redrawing a bar would write hundreds of carriage-return updates, so it
is a ``LineProgress`` instead: one line when a stage starts, one at every 10 % of its total, one
when it is done with the rate, and one when the caller names a new stage (``set_description``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Iterable

STEP_PERCENT = 10
UNKNOWN_TOTAL_EVERY_S = 30.0  # a line at most this often when the total is unknown


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", file: IO[str] | None = None, disable: bool = False, leave: bool = True,
                 initial: float = 0, **tqdm_options):
    """A tqdm bar when ``file`` (default: stderr) is a terminal, else a ``LineProgress``; both
    take ``update(n)``, ``set_description``, ``set_postfix``, ``write``, ``close``, iteration and
    ``with``. ``tqdm_options`` (e.g. ``smoothing``) apply to the terminal bar only."""
    stream = sys.stderr if file is None else file
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, disable=disable, leave=leave,
                    initial=initial, **tqdm_options)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=stream, disable=disable, initial=initial)


class LineProgress:
    """Progress as a few whole lines: start, every ``STEP_PERCENT`` % of ``total``, done (with the
    rate), and a line per new description. Thread-safe ``update``."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", file: IO[str] | None = None, disable: bool = False, initial: float = 0):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.file = sys.stderr if file is None else file
        self.disable, self.n, self.initial = disable, initial, initial
        self.postfix = ""
        self._lock = threading.Lock()
        self._started = self._last_line = time.perf_counter()
        self._step = self._step_of(initial)
        self._closed = False
        self._print(f"started ({self._count()})" if initial == 0 else f"resumed at {self._count()}")

    # -- tqdm's interface -----------------------------------------------------------------------

    def update(self, n: float = 1) -> None:
        with self._lock:
            self.n += n
            step = self._step_of(self.n)
            now = time.perf_counter()
            if self.total and step > self._step and self.n < self.total:
                self._step = step
                self._print(f"{int(self.n * 100 // self.total)}% ({self._count()}, {self._rate(now)})")
            elif not self.total and now - self._last_line >= UNKNOWN_TOTAL_EVERY_S:
                self._print(f"{self._count()}, {self._rate(now)}")

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        desc = desc or "progress"
        if desc != self.desc:
            self.desc = desc
            self._print(f"started (at {self._count()})")

    set_description_str = set_description

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        """Shown on the next line (e.g. a training loss)."""
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def write(self, text: str) -> None:
        if not self.disable:
            print(text, file=self.file, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            now = time.perf_counter()
            self._print(f"done, {self._count()} in {now - self._started:.1f} s ({self._rate(now)})")

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- lines --------------------------------------------------------------------------------

    def _step_of(self, n: float) -> int:
        return int(n * 100 // (self.total * STEP_PERCENT)) if self.total else 0

    def _count(self) -> str:
        done = f"{self.n:g}" if self.total is None else f"{self.n:g}/{self.total:g}"
        return f"{done} {self.unit}"

    def _rate(self, now: float) -> str:
        seconds = now - self._started
        done = self.n - self.initial
        return f"{done / seconds:.3g} {self.unit}/s" if seconds > 0 and done > 0 else f"- {self.unit}/s"

    def _print(self, what: str) -> None:
        self._last_line = time.perf_counter()
        if not self.disable:
            tail = f" [{self.postfix}]" if self.postfix else ""
            print(f"{self.desc}: {what}{tail}", file=self.file, flush=True)


__all__ = ["LineProgress", "STEP_PERCENT", "is_terminal", "progress_bar"]
