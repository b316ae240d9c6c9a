"""The document store of an Index: SQLite (standard library), keyed by the usearch integer key.

Why SQLite: lookups by key or by id touch only the rows asked for (B-trees, no corpus in RAM:
an index loaded with ``view=True`` reads documents from disk through the page cache, as usearch
does with vectors); removal and addition need no rewrite of offsets; a transaction keeps the
store whole; and the file format is documented and stable. A flat file of texts with an offsets
array would read a little faster, but would need its own compaction, id lookup table and
corruption checks; 100 documents per query cost well under a millisecond from SQLite, far below
embedding or reranking.

User ids are stored with their type (``str`` or ``int``; the ``id`` column has no type
affinity), so 5 and "5" are different ids.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Sequence

from crossrank.errors import IndexFormatError, InvalidArgumentError, UnknownIdError

SQL_CHUNK = 500  # values per "IN (...)" query, below SQLite's variable limit


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


class DocumentStore:
    """SQLite table ``documents(key INTEGER PRIMARY KEY, id UNIQUE, text)``; one lock for all calls.

    Built or loaded with view=False, the table lives in memory (``:memory:``); with view=True it
    is read in place from the saved file.
    """

    SCHEMA = ("CREATE TABLE IF NOT EXISTS documents "
              "(key INTEGER PRIMARY KEY, id NOT NULL UNIQUE, text TEXT NOT NULL)")

    def __init__(self, connection: sqlite3.Connection, path: Path | None = None, read_only: bool = False):
        self.db = connection
        self.path = path
        self.read_only = read_only
        self.lock = threading.RLock()
        if not read_only:
            self.db.execute(self.SCHEMA)

    @classmethod
    def in_memory(cls) -> "DocumentStore":
        return cls(sqlite3.connect(":memory:", check_same_thread=False))

    @classmethod
    def open(cls, path: Path, view: bool) -> "DocumentStore":
        """view=True: read the file in place (read-only); False: copy it into memory."""
        try:
            uri = f"{Path(path).resolve().as_uri()}?mode=ro&immutable=1"  # generations never change
            source = sqlite3.connect(uri, uri=True, check_same_thread=False)
            source.execute("SELECT key, id, text FROM documents LIMIT 1").fetchall()
            if view:
                return cls(source, path, read_only=True)
            memory = sqlite3.connect(":memory:", check_same_thread=False)
            source.backup(memory)
            source.close()
            return cls(memory, path)
        except sqlite3.Error as err:
            raise IndexFormatError(f"document store {str(path)!r} is unreadable ({err}): the index is "
                                   f"corrupted; rebuild it with `crossrank index build`") from err

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def insert(self, keys: Sequence[int], ids: Sequence, texts: Sequence[str]) -> None:
        """Insert rows in one transaction; a duplicate id raises ValueError naming it, nothing kept."""
        with self.lock:
            try:
                with self.db:
                    self.db.executemany("INSERT INTO documents (key, id, text) VALUES (?, ?, ?)",
                                        zip(keys, ids, texts))
            except sqlite3.IntegrityError as err:
                taken = self.keys_of(ids, missing_ok=True)
                dup = next((i for i, k in zip(ids, taken) if k is not None), None)
                raise InvalidArgumentError(f"id {dup!r} is already in the index (ids must be unique)") from err

    def delete(self, keys: Sequence[int]) -> None:
        with self.lock, self.db:
            for part in chunks(list(keys), SQL_CHUNK):
                self.db.execute(f"DELETE FROM documents WHERE key IN ({','.join('?' * len(part))})", part)

    def rows_by_key(self, keys: Sequence[int]) -> dict[int, tuple]:
        """key -> (id, text) for the keys that exist."""
        found: dict[int, tuple] = {}
        with self.lock:
            for part in chunks([int(k) for k in keys], SQL_CHUNK):
                sql = f"SELECT key, id, text FROM documents WHERE key IN ({','.join('?' * len(part))})"
                found.update((key, (doc_id, text)) for key, doc_id, text in self.db.execute(sql, part))
        return found

    def texts_by_key(self, keys: Sequence[int]) -> dict[int, str]:
        """key -> text for the given keys; a missing key raises IndexFormatError (the store and the
        vectors disagree)."""
        found: dict[int, str] = {}
        with self.lock:
            for part in chunks([int(k) for k in keys], SQL_CHUNK):
                sql = f"SELECT key, text FROM documents WHERE key IN ({','.join('?' * len(part))})"
                found.update(self.db.execute(sql, part))
        missing = [int(k) for k in keys if int(k) not in found]
        if missing:
            raise IndexFormatError(f"vector key {missing[0]} has no document in the store "
                                   f"{self.path or '(memory)'}: the index is inconsistent")
        return found

    def ids_by_key(self, keys: Sequence[int]) -> dict[int, object]:
        found: dict[int, object] = {}
        with self.lock:
            for part in chunks([int(k) for k in keys], SQL_CHUNK):
                sql = f"SELECT key, id FROM documents WHERE key IN ({','.join('?' * len(part))})"
                found.update(self.db.execute(sql, part))
        return found

    def keys_of(self, ids: Sequence, missing_ok: bool = False) -> list[int | None]:
        """The key of each id in order; a missing id raises KeyError naming it unless missing_ok."""
        found: dict = {}
        with self.lock:
            for part in chunks(list(ids), SQL_CHUNK):
                sql = f"SELECT id, key FROM documents WHERE id IN ({','.join('?' * len(part))})"
                found.update(self.db.execute(sql, part))
        keys = [found.get(i) for i in ids]
        if not missing_ok:
            missing = [i for i, k in zip(ids, keys) if k is None]
            if missing:
                raise UnknownIdError(f"{len(missing)} id(s) are not in the index, e.g. {missing[0]!r}")
        return keys

    def all_ids(self) -> list:
        with self.lock:
            return [row[0] for row in self.db.execute("SELECT id FROM documents ORDER BY key")]

    def write_copy(self, path: Path) -> None:
        target = sqlite3.connect(path)
        try:
            with self.lock:
                self.db.backup(target)
        finally:
            target.close()
