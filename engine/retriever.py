"""Where candidates come from: the retriever protocol, reciprocal rank fusion, hybrid retrieval.

A retriever takes a batch of queries (their texts, and their vectors when it searches vectors) and
returns for each up to k candidates, best first: ids, first-stage scores and the documents' texts
(and metadata) in one round trip. ``Pipeline`` and its cascades, ``crossrank search|eval|select``
and ``/v1/search`` take any retriever:

- ``crossrank.Index``: the embedded usearch index (the default: no server).
- stores behind extras, never imported by ``import crossrank``: ``crossrank.stores.pgvector``
  (PostgreSQL + pgvector, extra ``pgvector``) and ``crossrank.stores.milvus`` (extra ``milvus``).
- lexical retrievers: Postgres full-text search (``PgvectorStore.lexical()``) and BM25 beside an
  embedded index (``crossrank.stores.bm25``, extra ``bm25``).
- ``Hybrid(dense, lexical)``: both, fused by reciprocal rank fusion (``fuse``).

Scores mean what each retriever says in ``describe()["score"]`` (cosine similarity, BM25,
ts_rank, RRF); only their order is compared across retrievers.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from crossrank.errors import ArgumentTypeError, InvalidArgumentError, UsageError, check_int

DEFAULT_RRF_K = 60  # Cormack, Clarke & Buettcher (SIGIR 2009): k = 60, robust across collections


class Candidates(NamedTuple):
    """One query's first-stage candidates, best first."""

    ids: list                      # document ids (str or int)
    scores: np.ndarray             # float32, higher is better; meaning: the retriever's describe()["score"]
    documents: list                # the documents' texts
    metadata: list | None = None   # one dict per candidate, or None where the retriever keeps none


@runtime_checkable
class Retriever(Protocol):
    """What Pipeline needs from a first stage."""

    needs_vectors: bool   # True: give retrieve_many the queries' vectors (the Pipeline embeds them)
    embedder_info: dict   # the embedder its vectors came from (sha256, dim, path); {} for lexical ones

    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        """Up to ``k`` candidates per query. ``vectors``: [n, dim] float32 query vectors (None: the
        retriever embeds the texts itself, if it can). ``timings``, when given, receives "search"
        and "fetch" milliseconds (fetch 0 where documents come back with the search)."""

    def retrieve(self, query: str, vector: np.ndarray | None = None, k: int = 100) -> Candidates:
        """``retrieve_many`` for one query."""

    def describe(self) -> dict:
        """JSON-able: kind, where, how many documents, settings, what the score means."""


def empty_candidates() -> Candidates:
    return Candidates([], np.zeros(0, dtype=np.float32), [], None)


class RetrieverBase:
    """The parts every retriever shares: the single-query form and checking query vectors."""

    needs_vectors = True
    embedder = None
    embedder_info: dict = {}
    dim: int = 0

    def retrieve(self, query: str, vector: np.ndarray | None = None, k: int = 100) -> Candidates:
        vectors = None if vector is None else np.asarray(vector, dtype=np.float32).reshape(1, -1)
        return self.retrieve_many([query], vectors, k)[0]

    def query_vectors(self, queries: Sequence[str], vectors) -> np.ndarray | None:
        """The [n, dim] float32 query vectors: ``vectors`` checked, or the texts embedded by this
        retriever's embedder; None for a retriever that needs none."""
        if not self.needs_vectors:
            return None
        if vectors is None:
            if self.embedder is None:
                raise UsageError(f"{type(self).__name__} has no embedder to embed text queries: pass "
                                 f"embedder= when opening it, or pass the query vectors")
            vectors = self.embedder.embed(list(queries))
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(queries), self.dim):
            raise InvalidArgumentError(f"query vectors have shape {vectors.shape}; expected ({len(queries)}, "
                                       f"{self.dim})")
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):
            raise InvalidArgumentError(f"query vector {int(bad[0])} has nan or inf values: a vector must be finite")
        return np.ascontiguousarray(vectors)


def check_retriever(retriever, name: str = "retriever"):
    """The retriever itself, or ArgumentTypeError naming what it lacks."""
    missing = [attr for attr in ("retrieve_many", "describe", "needs_vectors") if not hasattr(retriever, attr)]
    if missing:
        raise ArgumentTypeError(f"{name} must be a retriever (crossrank.Index, a store from crossrank.stores, "
                                f"a lexical retriever or crossrank.Hybrid); {type(retriever).__name__} has no "
                                f"{', '.join(missing)}")
    return retriever


def fuse(rankings: Sequence[Candidates], k: int, rrf_k: int = DEFAULT_RRF_K) -> Candidates:
    """Reciprocal rank fusion of several rankings of one query: a document's score is the sum over
    the rankings that hold it of ``1 / (rrf_k + rank)`` (rank 1-based); the top ``k`` by that score.
    Ties keep the order of first appearance (the first ranking's order, then the next one's)."""
    check_int(k, "k")
    check_int(rrf_k, "rrf_k", low=0)
    score: dict = {}
    found: dict = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking.ids, start=1):
            key = (type(doc_id), doc_id)
            score[key] = score.get(key, 0.0) + 1.0 / (rrf_k + rank)
            if key not in found:
                found[key] = (doc_id, ranking.documents[rank - 1],
                              ranking.metadata[rank - 1] if ranking.metadata is not None else None)
    order = sorted(score, key=lambda key: -score[key])[:k]  # stable: ties in order of first appearance
    has_metadata = any(r.metadata is not None for r in rankings)
    return Candidates([found[key][0] for key in order], np.array([score[key] for key in order], dtype=np.float32),
                      [found[key][1] for key in order], [found[key][2] for key in order] if has_metadata else None)


class Hybrid(RetrieverBase):
    """Dense and lexical candidates fused by reciprocal rank fusion: ``Hybrid(store, store.lexical())``.

    Each retriever returns its top ``depth`` (default: the k asked for) and the fused top k is
    kept. ``rrf_k`` (default 60) damps the weight of the top ranks: with k = 60 the first and the
    tenth place of one ranking score 1/61 and 1/70. The two must hold the same documents under the
    same ids (a store and its own lexical index).
    """

    def __init__(self, dense, lexical, rrf_k: int = DEFAULT_RRF_K, depth: int | None = None):
        self.dense = check_retriever(dense, "dense")
        self.lexical = check_retriever(lexical, "lexical")
        self.rrf_k = check_int(rrf_k, "rrf_k", low=0)
        self.depth = check_int(depth, "depth", allow_none=True)
        self.needs_vectors = bool(dense.needs_vectors or lexical.needs_vectors)
        self.embedder_info = dict(getattr(dense, "embedder_info", {}) or {})
        self.embedder = getattr(dense, "embedder", None)
        self.dim = getattr(dense, "dim", 0)
        self.where = getattr(dense, "where", None) or getattr(dense, "path", None)  # named in errors

    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        k = check_int(k, "k")
        depth = max(k, self.depth or k)
        parts = {"search": 0.0, "fetch": 0.0}
        results = []
        for retriever in (self.dense, self.lexical):
            own: dict = {}
            results.append(retriever.retrieve_many(queries, vectors if retriever.needs_vectors else None, depth, own))
            for stage in parts:
                parts[stage] += own.get(stage, 0.0)
        start = time.perf_counter()
        fused = [fuse(pair, k, self.rrf_k) for pair in zip(*results)]
        parts["search"] += (time.perf_counter() - start) * 1e3
        if timings is not None:
            timings.update(parts)
        return fused

    def describe(self) -> dict:
        return {"kind": "hybrid", "fusion": "reciprocal rank fusion", "rrf_k": self.rrf_k, "depth": self.depth,
                "score": f"sum of 1/({self.rrf_k} + rank) over the dense and lexical rankings",
                "dense": self.dense.describe(), "lexical": self.lexical.describe()}

    def __len__(self) -> int:
        return len(self.dense)

    def __contains__(self, doc_id) -> bool:
        return doc_id in self.dense


__all__ = ["Candidates", "DEFAULT_RRF_K", "Hybrid", "Retriever", "RetrieverBase", "check_retriever",
           "empty_candidates", "fuse"]
