"""First stages where users' documents already live, behind extras: ``import crossrank`` never
imports this package.

- ``crossrank.stores.pgvector.PgvectorStore``: PostgreSQL + pgvector (``pip install
  'crossrank[pgvector]'``; psycopg 3). Any managed Postgres, or Citus to scale out.
- ``crossrank.stores.milvus.MilvusStore``: Milvus through ``pymilvus.MilvusClient`` (``pip install
  'crossrank[milvus]'``).
- ``crossrank.stores.bm25.BM25Retriever``: BM25 candidates beside an embedded ``crossrank.Index``
  (``pip install 'crossrank[bm25]'``; bm25s).

Each is a retriever (crossrank.retriever) that ``Pipeline`` takes. ``open_retriever(where, ...)``
opens one from a command-line spec: ``postgresql://...``, ``milvus://host:port`` or an index folder.

What they share (masking credentials, the embedder record, loading in batches): crossrank.stores.common.
"""

from __future__ import annotations

from crossrank.errors import InvalidArgumentError, UsageError
from crossrank.stores.common import DEFAULT_TABLE, mask_url


def store_kind(where: str) -> str:
    """"pgvector", "milvus" or "index" for a --store spec."""
    scheme = where.split("://", 1)[0].lower() if "://" in where else ""
    if scheme in ("postgresql", "postgres"):
        return "pgvector"
    if scheme in ("milvus", "milvus+https", "http", "https"):
        return "milvus"
    if scheme:
        raise InvalidArgumentError(f"store {mask_url(where)!r} has the scheme {scheme!r}; accepted: postgresql://..., "
                                   f"milvus://host:port, or an index folder")
    return "index"


def open_retriever(where: str, *, table: str = DEFAULT_TABLE, embedder=None, hybrid: bool = False,
                   read_only_columns: dict | None = None, ef_search: int | None = None):
    """The retriever a --store spec names: a PostgreSQL URL (table ``table``), a Milvus URL
    (collection ``table``) or an index folder. ``hybrid``: its dense and lexical candidates fused
    (pgvector: full-text search; an index folder: the BM25 index saved beside it; Milvus: refused).
    ``read_only_columns``: open a user's own PostgreSQL table read-only (PgvectorStore.attach)."""
    from crossrank.retriever import Hybrid

    kind = store_kind(where)
    if kind == "pgvector":
        from crossrank.stores.pgvector import PgvectorStore

        if read_only_columns:
            store = PgvectorStore.attach(where, table, embedder=embedder, ef_search=ef_search, **read_only_columns)
        else:
            store = PgvectorStore.open(where, table, embedder=embedder, ef_search=ef_search)
        return store.hybrid() if hybrid else store
    if read_only_columns:
        raise UsageError("--id-column/--text-column/--vector-column (a table of your own, read-only) are for "
                         "PostgreSQL stores")
    if kind == "milvus":
        if hybrid:
            raise UsageError("--hybrid is not supported on Milvus stores here (pgvector: full-text search; an "
                             "index folder: BM25, built with `crossrank index build --hybrid`)")
        from crossrank.stores.milvus import MilvusStore

        return MilvusStore.open(where, table, embedder=embedder, ef_search=ef_search)
    from crossrank.index import Index

    index = Index.load(where, view=True, embedder=embedder)
    if ef_search is not None:
        index.expansion_search = ef_search
    if not hybrid:
        return index
    from crossrank.stores.bm25 import BM25Retriever

    return Hybrid(index, BM25Retriever.load(where, index))


__all__ = ["open_retriever", "store_kind"]
