"""Locks: readers/writer between threads of one process, and an advisory file lock between processes;
and ``write_text_atomically``, the one way crossrank replaces a small file (written aside, renamed).

``ReadWriteLock``: many readers (searches) at once, or one writer (add/remove); a waiting writer
blocks new readers, so a stream of searches cannot starve it.

``FileLock``: ``fcntl.flock`` on a lock file that crossrank creates next to what it protects (e.g.
``DIR/.lock`` of an index), so that writers in different processes take turns. The kernel releases
it when the holder dies, so a killed writer never leaves it locked. Where ``fcntl`` does not exist
(Windows) it is a no-op and writers are not serialised across processes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class ReadWriteLock:
    """Many readers or one writer. Reading is reentrant (a thread holding it may take it again,
    even while a writer waits); writing is not, and a writer must not also read."""

    def __init__(self):
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._held = threading.local()

    @contextmanager
    def reading(self):
        depth = getattr(self._held, "depth", 0)
        with self._condition:
            while self._writer or (self._writers_waiting and not depth):
                self._condition.wait()
            self._readers += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def writing(self):
        with self._condition:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


@contextmanager
def file_lock(path: str | Path):
    """Hold an exclusive advisory lock on ``path`` for the ``with`` block: a lock file (created if
    missing) or an existing folder (locked in place, nothing created)."""
    path = Path(path)
    handle = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            os.close(handle)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


__all__ = ["ReadWriteLock", "file_lock", "pid_alive"]


def write_text_atomically(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename: a reader sees the old file or the new
    one, never a part; the temporary file is removed if writing fails."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
