"""PostgreSQL + pgvector as crossrank's first stage (extra ``pgvector``: psycopg 3 and pgvector).

A table crossrank owns::

    id text PRIMARY KEY, document text NOT NULL, metadata jsonb,
    embedding vector(dim) NOT NULL,                                          -- HNSW, vector_cosine_ops
    fts tsvector GENERATED ALWAYS AS (to_tsvector('english', document)) STORED   -- GIN (lexical)

Its ``COMMENT`` holds crossrank's record (JSON: the embedder's model.onnx sha256 and dim, the HNSW
settings): a table without it is not crossrank's, and crossrank never writes to, drops or alters
it. A mismatched embedder is refused (EmbedderMismatchError), as ``Index.load`` does.

- ``PgvectorStore.build(url, table, embedder, documents, ids)``: one transaction: a new table,
  COPY of the embedded documents (progress bar), the HNSW and GIN indexes, then (``force=True``)
  the old table of that name dropped and the new one renamed in its place. A load killed at any
  point leaves the old table (or none) whole; readers see the old rows until the commit.
- ``upsert`` / ``delete`` by id: one transaction each (COPY into a temporary table, then INSERT ...
  ON CONFLICT); writers of one table take turns on an advisory lock.
- ``retrieve_many``: one SQL statement for a batch of query vectors (a LATERAL join), ids,
  similarities (1 - cosine distance), texts and metadata in one round trip; ``hnsw.ef_search`` is
  max(ef_search, k) (pgvector returns at most ef_search rows per HNSW scan).
- ``lexical()``: Postgres full-text search over the same rows (``ts_rank`` of the query's words
  OR-ed); ``hybrid()``: both fused by reciprocal rank fusion.
- ``PgvectorStore.attach(url, table, id_column=..., text_column=..., vector_column=...)``: a table
  of the user's, read-only (every session ``default_transaction_read_only``).

Connections: one URL (``postgresql://user@host:port/db``, libpq's environment variables such as
PGPASSWORD apply); searches take a connection each from a small pool, so threads search side by
side. Passwords never appear in messages (crossrank.stores.mask_url).
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Sequence

import numpy as np

from crossrank.errors import (InvalidArgumentError, NotOwnedError, OutputExistsError, StoreError, UnknownIdError,
                              UsageError, check_ids, check_int)
from crossrank.index import DEFAULT_EXPANSION_SEARCH as DEFAULT_EF_SEARCH  # one default: the Index's (256)
from crossrank.retriever import Candidates, RetrieverBase
from crossrank.stores.common import (RECORD_KIND, check_documents, check_name, check_store_embedder, embedded_batches,
                              mask_credentials, mask_url, store_record)

try:
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
    from pgvector.psycopg import register_vector
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError(f"PostgreSQL stores need the 'pgvector' extra: pip install 'crossrank[pgvector]' ({err})") from err

DEFAULT_M = 16                 # pgvector's default HNSW connectivity
DEFAULT_EF_CONSTRUCTION = 128  # pgvector's default is 64; 128 builds a better graph for 2x the build time
TEXT_SEARCH_CONFIG = "english"
POOL_SIZE = 8


def connect(url: str, read_only: bool = False):
    """An autocommit psycopg connection; StoreError naming the URL (password masked) if it fails.
    read_only: every transaction of the session is read-only (the server refuses writes)."""
    options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
    try:
        return psycopg.connect(url, autocommit=True, application_name="crossrank", connect_timeout=10, **options)
    except psycopg.Error as err:
        detail = " ".join(mask_credentials(str(err)).split())
        raise StoreError(f"cannot connect to PostgreSQL at {mask_url(url)}: {detail}") from None


class _Pool:
    """Idle connections kept for reuse (at most ``size``); a connection that raised is closed."""

    def __init__(self, connect, size: int = POOL_SIZE):
        self._connect = connect
        self._size = size
        self._idle: list = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self):
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self._connect()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < self._size and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _identifier(name: str):
    return sql.Identifier(*name.split(".")) if "." in name else sql.Identifier(name)


class PgvectorStore(RetrieverBase):
    """A pgvector table as a retriever. Open with ``open`` (crossrank's table), ``create`` /
    ``build`` (make one) or ``attach`` (a user's table, read-only); see the module docstring."""

    def __init__(self, url: str, table: str, record: dict, *, embedder=None, ef_search: int | None = None,
                 columns: dict | None = None, read_only: bool = False):
        self.url = url
        self.table = table
        self.record = record
        self.embedder = embedder
        self.embedder_info = dict(record.get("embedder") or {})
        self.dim = int(record["dim"])
        self.ef_search = check_int(ef_search, "ef_search", allow_none=True) or DEFAULT_EF_SEARCH
        self.read_only = read_only
        # metadata: a jsonb column's name, a list of columns returned as one JSON object, or None
        self.columns = columns or {"id": "id", "document": "document", "vector": "embedding",
                                   "metadata": "metadata", "fts": "fts"}
        self._pool = _Pool(self._connect)
        self._ef = weakref.WeakKeyDictionary()  # connection -> the hnsw.ef_search it has

    # -- connections ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{mask_url(self.url)} table {self.table!r}"

    def _connect(self):
        conn = connect(self.url, read_only=self.read_only)
        try:
            register_vector(conn)
        except psycopg.ProgrammingError as err:
            conn.close()
            raise StoreError(f"{mask_url(self.url)} has no pgvector extension ('vector' type): {err}") from None
        return conn

    def close(self) -> None:
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- making and opening -------------------------------------------------------------------
    @staticmethod
    def _record_of(conn, table: str, url: str) -> dict | None:
        """crossrank's record of ``table`` (None: no such table); NotOwnedError for a table crossrank
        did not create."""
        row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL",
                           (table, table)).fetchone()
        comment, exists = row
        if not exists:
            return None
        try:
            record = json.loads(comment) if comment else None
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
            raise NotOwnedError(f"table {table!r} at {mask_url(url)} exists and was not created by "
                                f"crossrank: crossrank never writes to, drops or alters it. Search it read-only with "
                                f"PgvectorStore.attach (--id-column, --text-column, --vector-column), or choose "
                                f"another table name")
        return record

    @classmethod
    def open(cls, url: str, table: str, embedder=None, ef_search: int | None = None) -> "PgvectorStore":
        """crossrank's table ``table``; the embedder, when given, must be the one that built it."""
        with connect(url) as conn:
            record = cls._record_of(conn, table, url)
        if record is None:
            raise StoreError(f"{mask_url(url)} has no table {table!r}: build one with `crossrank index build --store "
                             f"URL --table {table}` (PgvectorStore.build)")
        check_store_embedder(record, embedder, f"table {table!r} at {mask_url(url)}")
        return cls(url, table, record, embedder=embedder, ef_search=ef_search)

    @classmethod
    def create(cls, url: str, table: str, embedder, *, m: int = DEFAULT_M,
               ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int | None = None) -> "PgvectorStore":
        """An empty table of crossrank's (OutputExistsError if one exists: open it, or ``build(force=True)``)."""
        return cls.build(url, table, embedder, [], [], m=m, ef_construction=ef_construction, ef_search=ef_search,
                         progress=False)

    @classmethod
    def build(cls, url: str, table: str, embedder, documents: Sequence[str], ids: Sequence, *,
              metadata: Sequence[dict] | None = None, vectors: np.ndarray | None = None, force: bool = False,
              m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int | None = None,
              batch_size: int = 256, progress: bool = True) -> "PgvectorStore":
        """Embed ``documents`` and load them into a new table ``table`` in one transaction (see the
        module docstring). ``force``: replace crossrank's existing table of that name (a table
        crossrank did not create is never replaced: NotOwnedError)."""
        check_name(table)
        check_int(m, "m", low=2, high=100)
        check_int(ef_construction, "ef_construction", low=4, high=1000)
        dim = int(embedder.dim)
        texts, ids, metadata, vectors = check_documents(documents, ids, metadata, vectors, dim)
        record = store_record(embedder, dim, metric="cos", hnsw={"m": m, "ef_construction": ef_construction},
                              text_search_config=TEXT_SEARCH_CONFIG)
        staging = f"{table}__crossrank_load"
        name, new = _identifier(table), _identifier(staging)
        with connect(url) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"crossrank:{table}",))
                old = cls._record_of(conn, table, url)
                if old is not None and not force:
                    raise OutputExistsError(f"table {table!r} at {mask_url(url)} exists: pass force=True (--force) "
                                            f"to replace it, or add documents with upsert")
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(new))  # a rolled-back load leaves none
                conn.execute(sql.SQL(
                    "CREATE TABLE {} (id text PRIMARY KEY, document text NOT NULL, metadata jsonb, "
                    "embedding vector({}) NOT NULL, fts tsvector GENERATED ALWAYS AS "
                    "(to_tsvector({}, document)) STORED)").format(new, sql.Literal(dim), sql.Literal(TEXT_SEARCH_CONFIG)))
                _copy_rows(conn, new, embedder, texts, ids, metadata, vectors, batch_size, progress, "loading")
                conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) "
                                     "WITH (m = {}, ef_construction = {})").format(
                    sql.Identifier(f"{staging}_hnsw"), new, sql.Literal(m), sql.Literal(ef_construction)))
                conn.execute(sql.SQL("CREATE INDEX {} ON {} USING gin (fts)").format(
                    sql.Identifier(f"{staging}_fts"), new))
                if old is not None:
                    conn.execute(sql.SQL("DROP TABLE {}").format(name))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(table)))
                for suffix in ("hnsw", "fts"):
                    conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(f"{staging}_{suffix}"), sql.Identifier(f"{table}_{suffix}")))
                conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(name, sql.Literal(json.dumps(record))))
            conn.execute(sql.SQL("ANALYZE {}").format(name))
        return cls(url, table, record, embedder=embedder, ef_search=ef_search)

    @classmethod
    def attach(cls, url: str, table: str, *, id_column: str, text_column: str, vector_column: str,
               metadata_columns: Sequence[str] = (), embedder=None, ef_search: int | None = None) -> "PgvectorStore":
        """A table of the user's, searched read-only: its columns are named here. crossrank cannot
        check which model made its vectors (only their dimension, against ``embedder``); lexical
        search computes ``to_tsvector('english', text_column)`` per row (index that expression
        with GIN for speed)."""
        columns = {"id": id_column, "document": text_column, "vector": vector_column,
                   "metadata": list(metadata_columns) or None, "fts": None}
        wanted = [id_column, text_column, vector_column, *metadata_columns]
        with connect(url) as conn:
            rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                                (table,)).fetchall()
        if not rows:
            raise StoreError(f"{mask_url(url)} has no table {table!r} (or it has no columns)")
        types = dict(rows)
        missing = [c for c in wanted if c not in types]
        if missing:
            raise InvalidArgumentError(f"table {table!r} has no column {missing[0]!r}; its columns: {sorted(types)}")
        vector_type = types[vector_column]
        if not vector_type.startswith("vector("):
            raise InvalidArgumentError(f"column {vector_column!r} of {table!r} is {vector_type}, not a pgvector "
                                       f"vector(n) column")
        dim = int(vector_type[len("vector("):-1])
        record = {"kind": "user-table", "dim": dim, "embedder": {}}
        check_store_embedder(record, embedder, f"table {table!r} at {mask_url(url)}")
        return cls(url, table, record, embedder=embedder, ef_search=ef_search, columns=columns, read_only=True)

    # -- writing ----------------------------------------------------------------------------
    def _writable(self, action: str) -> None:
        if self.read_only:
            raise UsageError(f"cannot {action}: {self.where} is a table of yours opened read-only (attach)")

    @contextmanager
    def _writing(self, conn):
        """A transaction holding this table's writer lock, after checking the table is still crossrank's."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"crossrank:{self.table}",))
            if self._record_of(conn, self.table, self.url) is None:
                raise StoreError(f"{self.where} does not exist any more")
            yield

    def upsert(self, documents: Sequence[str], ids: Sequence, *, metadata: Sequence[dict] | None = None,
               vectors: np.ndarray | None = None, batch_size: int = 256, progress: bool = False) -> int:
        """Insert or replace documents by id, in one transaction (COPY into a temporary table, then
        INSERT ... ON CONFLICT): the next search sees all of them or, if this fails, none."""
        self._writable("upsert documents")
        texts, ids, metadata, vectors = check_documents(documents, ids, metadata, vectors, self.dim)
        if not texts:
            return 0
        with self._pool.connection() as conn, self._writing(conn):
            load = sql.Identifier("crossrank_upsert")
            conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} (id text, document text, metadata jsonb, "
                                 "embedding vector({})) ON COMMIT DROP").format(load, sql.Literal(self.dim)))
            _copy_rows(conn, load, self.embedder, texts, ids, metadata, vectors, batch_size, progress, "upserting")
            conn.execute(sql.SQL(
                "INSERT INTO {} (id, document, metadata, embedding) SELECT id, document, metadata, embedding FROM {} "
                "ON CONFLICT (id) DO UPDATE SET document = excluded.document, metadata = excluded.metadata, "
                "embedding = excluded.embedding").format(_identifier(self.table), load))
        return len(texts)

    def delete(self, ids: Sequence) -> int:
        """Delete documents by id in one transaction; returns how many there were (unknown ids are
        skipped, and counted out)."""
        self._writable("delete documents")
        if isinstance(ids, (str, int, np.integer)):
            ids = [ids]
        ids = [str(i) for i in check_ids(ids)]
        with self._pool.connection() as conn, self._writing(conn):
            cursor = conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(_identifier(self.table)), (ids,))
            return cursor.rowcount

    # -- searching --------------------------------------------------------------------------
    def _columns_sql(self, score):
        """id, document, metadata, score: the select list of a search."""
        c = self.columns
        if c["metadata"] is None:
            metadata = sql.SQL("NULL::jsonb")
        elif isinstance(c["metadata"], str):
            metadata = sql.Identifier(c["metadata"])
        else:
            metadata = sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
                sql.SQL("{}, {}").format(sql.Literal(name), sql.Identifier(name)) for name in c["metadata"]))
        return sql.SQL("{}::text AS id, {} AS document, {} AS metadata, {} AS score").format(
            sql.Identifier(c["id"]), sql.Identifier(c["document"]), metadata, score)

    def _set_ef_search(self, conn, k: int) -> None:
        wanted = max(self.ef_search, k)
        if self._ef.get(conn) != wanted:
            conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(wanted),))
            self._ef[conn] = wanted

    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        k = check_int(k, "k")
        vectors = self.query_vectors(queries, vectors)
        start = time.perf_counter()
        vector = sql.Identifier(self.columns["vector"])
        query = sql.SQL(
            "SELECT q.n, d.* FROM unnest(%s::vector[]) WITH ORDINALITY AS q(v, n) CROSS JOIN LATERAL "
            "(SELECT {columns} FROM {table} ORDER BY {vector} <=> q.v LIMIT %s) AS d ORDER BY q.n, d.score DESC, d.id").format(
            columns=self._columns_sql(sql.SQL("1 - ({} <=> q.v)").format(vector)), table=_identifier(self.table),
            vector=vector)
        with self._pool.connection() as conn:
            self._set_ef_search(conn, k)
            rows = self._execute(conn, query, (list(vectors), k))
        if timings is not None:
            timings.update(search=(time.perf_counter() - start) * 1e3, fetch=0.0)
        return _group(rows, len(vectors))

    def _execute(self, conn, query, params) -> list:
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.Error as err:
            raise StoreError(f"{self.where}: {' '.join(mask_credentials(str(err)).split())}") from None

    def lexical(self) -> "PostgresFullText":
        """Full-text candidates from the same table (crossrank.retriever.Hybrid fuses the two)."""
        return PostgresFullText(self)

    def hybrid(self, rrf_k: int | None = None, depth: int | None = None):
        from crossrank.retriever import DEFAULT_RRF_K, Hybrid

        return Hybrid(self, self.lexical(), rrf_k=DEFAULT_RRF_K if rrf_k is None else rrf_k, depth=depth)

    # -- reading back -----------------------------------------------------------------------
    def __len__(self) -> int:
        with self._pool.connection() as conn:
            return int(self._execute(conn, sql.SQL("SELECT count(*) FROM {}").format(_identifier(self.table)), ())[0][0])

    def __contains__(self, doc_id) -> bool:
        with self._pool.connection() as conn:
            return bool(self._execute(conn, sql.SQL("SELECT 1 FROM {} WHERE {}::text = %s").format(
                _identifier(self.table), sql.Identifier(self.columns["id"])), (str(doc_id),)))

    def get_documents(self, ids: Sequence) -> list[str]:
        """Texts of the given ids, in order; an unknown id raises UnknownIdError naming it."""
        ids = [str(i) for i in check_ids(ids)]
        c = self.columns
        with self._pool.connection() as conn:
            rows = dict(self._execute(conn, sql.SQL("SELECT {}::text, {} FROM {} WHERE {}::text = ANY(%s)").format(
                sql.Identifier(c["id"]), sql.Identifier(c["document"]), _identifier(self.table),
                sql.Identifier(c["id"])), (ids,)))
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownIdError(f"{len(missing)} id(s) are not in {self.where}, e.g. {missing[0]!r}")
        return [rows[i] for i in ids]

    def describe(self) -> dict:
        return {"kind": "pgvector", "where": self.where, "table": self.table, "documents": len(self),
                "read_only": self.read_only, "dim": self.dim, "metric": "cos", "hnsw": self.record.get("hnsw"),
                "ef_search": self.ef_search, "score": "cosine similarity (1 - cosine distance)",
                "embedder": {key: self.embedder_info.get(key) for key in ("sha256", "dim", "path", "precision")}}

    def __repr__(self) -> str:
        return f"crossrank.stores.pgvector.PgvectorStore({self.where}{', read-only' if self.read_only else ''})"


class PostgresFullText(RetrieverBase):
    """Lexical candidates from a PgvectorStore's table: ``ts_rank`` of the document's tsvector
    ('english': stemmed, stop words dropped) against the query's words OR-ed (a document need not
    hold them all), best first, ties by id. On crossrank's table the generated ``fts`` column has
    a GIN index; on an attached table the tsvector is computed per row."""

    needs_vectors = False

    def __init__(self, store: PgvectorStore):
        self.store = store

    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        k = check_int(k, "k")
        store = self.store
        start = time.perf_counter()
        c = store.columns
        document = (sql.Identifier(c["fts"]) if c["fts"] else
                    sql.SQL("to_tsvector({}, {})").format(sql.Literal(TEXT_SEARCH_CONFIG), sql.Identifier(c["document"])))
        query = sql.SQL(
            "SELECT q.n, d.* FROM unnest(%s::text[]) WITH ORDINALITY AS q(text, n) "
            "CROSS JOIN LATERAL (SELECT replace(plainto_tsquery({config}, q.text)::text, '&', '|')::tsquery AS tsq) AS t "
            "CROSS JOIN LATERAL (SELECT {columns} FROM {table} WHERE {document} @@ t.tsq "
            "ORDER BY score DESC, id LIMIT %s) AS d ORDER BY q.n, d.score DESC, d.id").format(
            config=sql.Literal(TEXT_SEARCH_CONFIG), table=_identifier(store.table), document=document,
            columns=store._columns_sql(sql.SQL("ts_rank({}, t.tsq)").format(document)))
        with store._pool.connection() as conn:
            rows = store._execute(conn, query, (list(queries), k))
        if timings is not None:
            timings.update(search=(time.perf_counter() - start) * 1e3, fetch=0.0)
        return _group(rows, len(queries))

    def describe(self) -> dict:
        return {"kind": "postgres-full-text", "where": self.store.where, "config": TEXT_SEARCH_CONFIG,
                "score": "ts_rank of the query's words OR-ed"}

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, doc_id) -> bool:
        return doc_id in self.store


def _group(rows: list, queries: int) -> list[Candidates]:
    """Rows (query number from 1, id, document, metadata, score) -> one Candidates per query."""
    grouped: list[list] = [[] for _ in range(queries)]
    for n, doc_id, document, metadata, score in rows:
        grouped[n - 1].append((doc_id, document, metadata, score))
    out = []
    for rows_of_query in grouped:
        out.append(Candidates([r[0] for r in rows_of_query], np.array([r[3] for r in rows_of_query], dtype=np.float32),
                              [r[1] for r in rows_of_query], [r[2] for r in rows_of_query]))
    return out


def _copy_rows(conn, table, embedder, texts, ids, metadata, vectors, batch_size: int, progress: bool,
               desc: str) -> None:
    """COPY the documents with their vectors into ``table`` (id, document, metadata, embedding),
    embedding them batch by batch while the COPY streams."""
    columns = sql.SQL("COPY {} (id, document, metadata, embedding) FROM STDIN").format(table)
    with conn.cursor().copy(columns) as copy:
        for part, batch in embedded_batches(embedder, texts, vectors, batch_size, progress, desc):
            for i, vector in zip(part, batch):
                copy.write_row((ids[i], texts[i], Jsonb(metadata[i]) if metadata and metadata[i] is not None else None,
                                vector))
