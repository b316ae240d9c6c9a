"""Two-stage search: embed the query, take k candidates from the Index, rerank them, keep top_n.

Timings are wall-clock milliseconds per stage: ``embed`` (query embedding), ``search`` (HNSW walk
and key -> id lookup), ``fetch`` (candidate texts from the document store, by key, one query), ``rerank``
(tokenizing the pairs and running the cross-encoder; 0 without a reranker) and ``total``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from crossrank.errors import check_deadline_ms, check_int, check_queries, check_query, check_top_n
from crossrank.index import Index, check_embedder
from crossrank.scheduler import run_async

STAGES = ("embed", "search", "fetch", "rerank", "total")


@dataclass(frozen=True)
class Hit:
    """One result. ``rank`` is its final 1-based place; ``first_stage_rank`` its place among the
    k candidates by ``similarity`` (1 - cosine distance). ``score`` is the reranker's score
    (after the artifact's activation), None without a reranker."""

    id: object
    document: str
    similarity: float
    score: float | None
    rank: int
    first_stage_rank: int


@dataclass
class SearchResult:
    """The hits for one query, best first, and the stage timings in ms.

    From ``search_many`` the timings are those of the whole batch (shared by its results) and
    ``batch_size`` says how many queries it held.
    """

    query: str
    hits: list[Hit]
    candidates: int                  # how many the first stage returned (<= k)
    reranked: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    scored: int | None = None        # candidates the reranker scored (fewer under a deadline)

    @property
    def ids(self) -> list:
        return [hit.id for hit in self.hits]

    def to_dict(self) -> dict:
        return asdict(self)


class Pipeline:
    """``Pipeline(embedder, index, reranker=None)``; without a reranker it returns first-stage results.

    The embedder must be the artifact that built the index (checked: EmbedderMismatchError).
    """

    def __init__(self, embedder, index: Index, reranker=None):
        if index.embedder_info:
            check_embedder({"dim": index.dim, "embedder": index.embedder_info}, embedder,
                           index.path or "(in memory)")
        self.embedder = embedder
        self.index = index
        self.reranker = reranker

    def search(self, query: str, k: int = 100, top_n: int | None = 10,
               deadline_ms: float | None = None) -> SearchResult:
        """The ``top_n`` best of ``k`` first-stage candidates (top_n=None: all of them).

        deadline_ms: time allowed for the whole call. The reranker gets what the first stage
        left of it and scores candidates in first-stage order until the next batch would overrun
        (``Reranker.rerank(deadline_ms=...)``); unscored candidates follow in first-stage order
        with score nan, and ``result.scored`` says how many were scored.
        """
        query = check_query(query)
        return self._search([query], k, top_n, check_deadline_ms(deadline_ms))[0]

    async def asearch(self, query: str, k: int = 100, top_n: int | None = 10,
                      deadline_ms: float | None = None) -> SearchResult:
        """``search`` for asyncio callers: on a thread of its own, never on the event loop; with a
        shared embedder and reranker, concurrent searches share their batches."""
        return await run_async(self.search, query, k, top_n, deadline_ms)

    def search_many(self, queries: Sequence[str], k: int = 100, top_n: int | None = 10) -> list[SearchResult]:
        """``search`` for several queries: one embed call, one index call, shared rerank batches."""
        return self._search(check_queries(queries), k, top_n, None)

    def _search(self, queries: Sequence[str], k: int, top_n: int | None,
                deadline_ms: float | None) -> list[SearchResult]:
        check_int(k, "k")
        check_top_n(top_n)
        if not queries:
            return []
        timings: dict[str, float] = {}
        start = last = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal last
            now = time.perf_counter()
            timings[stage] = (now - last) * 1e3
            last = now

        vectors = self.embedder.embed(list(queries))
        lap("embed")
        first = self.index.search_vectors(vectors, k)
        lap("search")
        documents = self.index.fetch_documents(first)
        lap("fetch")
        if self.reranker is None:
            orders = [[(i, None) for i in range(len(hits.ids))][:top_n] for hits in first]
            scored = [None] * len(first)
        else:
            if deadline_ms is None:
                ranked = self.reranker.rerank_many(list(queries), documents, top_n=top_n)
                scored = [len(docs) for docs in documents]
            else:  # search() of one query
                left_ms = max(0.0, deadline_ms - (time.perf_counter() - start) * 1e3)
                ranked = [self.reranker.rerank(queries[0], documents[0], top_n=top_n, deadline_ms=left_ms)]
                scored = [ranked[0].scored]
            orders = [[(r.index, float(r.score)) for r in ranking] for ranking in ranked]
        lap("rerank")
        timings["total"] = (time.perf_counter() - start) * 1e3
        results = []
        for query, hits, docs, order, count in zip(queries, first, documents, orders, scored):
            chosen = [Hit(hits.ids[i], docs[i], float(hits.similarities[i]), score, rank, i + 1)
                      for rank, (i, score) in enumerate(order, start=1)]
            results.append(SearchResult(query, chosen, len(hits.ids), self.reranker is not None,
                                        dict(timings), len(queries), count))
        return results
