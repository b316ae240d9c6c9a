"""Two-stage (or multi-stage) search: embed the query, take k candidates from a retriever (the
usearch Index, a store, a lexical or a hybrid retriever: crossrank.retriever), rerank them with
one cross-encoder or a cascade of them, keep top_n.

A cascade ``rerankers=[small, large], depths=[100, 20]`` reranks the first stage's top 100 with the
small model, then the small model's top 20 with the large one; the final order is the large model's
20, then the rest of the small model's 100 in its order, then any first-stage candidates beyond 100
in their order. ``depths=[20]`` with one reranker reranks only the first stage's top 20.

Timings are wall-clock milliseconds per stage: ``embed`` (query embedding; 0 for a lexical
retriever), ``search`` (the retriever's search: HNSW walk and key -> id lookup for the Index, the
round trip for a store), ``fetch`` (candidate texts from the Index's document store, by key, one
query; 0 for stores, which return the texts with the search),
``rerank`` (tokenizing the pairs and running the cross-encoders, all reranking stages; 0 without a
reranker) and ``total``; ``SearchResult.stages`` has each reranking stage's depth, count scored and ms.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from crossrank.embedder import Embedder
from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, UsageError, check_deadline_ms, check_int,
                              check_queries, check_query, check_top_n)
from crossrank.index import check_embedder
from crossrank.reranker import Reranker
from crossrank.retriever import Retriever, check_retriever
from crossrank.scheduler import run_async

STAGES = ("embed", "search", "fetch", "rerank", "total")


@dataclass(frozen=True)
class SearchHit:
    """One result. ``rank`` is its final 1-based place; ``first_stage_rank`` its place among the
    k candidates by ``similarity``, the first stage's score (1 - cosine distance for a dense
    retriever; BM25, ts_rank or the RRF score for lexical and hybrid ones). ``metadata``: the
    store's metadata of the document (None where it keeps none). ``stage_scores`` holds each reranking
    stage's score (after the artifact's activation; None where that stage did not score it, nan
    where a deadline stopped it first); ``score`` is the score of the last stage that scored it
    (None without a reranker)."""

    id: object
    document: str
    similarity: float
    score: float | None
    rank: int
    first_stage_rank: int
    stage_scores: tuple = ()
    metadata: dict | None = None


@dataclass
class SearchResult:
    """The hits for one query, best first, and the stage timings in ms.

    From ``search_many`` the timings are those of the whole batch (shared by its results) and
    ``batch_size`` says how many queries it held.
    """

    query: str
    hits: list[SearchHit]
    candidates: int                  # how many the first stage returned (<= k)
    reranked: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    scored: int | None = None        # candidates the last reranker scored (fewer under a deadline)
    stages: list[dict] = field(default_factory=list)  # per reranking stage: depth, scored, ms

    @property
    def ids(self) -> list:
        return [hit.id for hit in self.hits]

    def to_dict(self) -> dict:
        return asdict(self)


Hit = SearchHit  # the earlier name, kept as an alias (docs/api.md)


def cascade_step(order: list[int], depth: int | None, ranking: Sequence[int]) -> list[int]:
    """The candidates' order after one reranking stage: the first ``depth`` of ``order`` (None:
    all) in the stage's ``ranking`` (positions into that head, best first), then the rest of
    ``order`` as it was. The one cascade rule: ``Pipeline`` and ``crossrank select`` apply it."""
    head = order[:depth]
    return [head[i] for i in ranking] + order[len(head):]


def check_cascade(rerankers: Sequence[Reranker], depths: Sequence[int | None] | None
                  ) -> tuple[list[Reranker], list[int | None]]:
    """(rerankers, depths) as lists; depths[i] = candidates stage i reranks (None: all of them)."""
    if isinstance(rerankers, (str, bytes)) or not isinstance(rerankers, Sequence) or not rerankers:
        raise ArgumentTypeError(f"rerankers must be a non-empty list of Rerankers, got {rerankers!r:.80}")
    if depths is None:
        if len(rerankers) > 1:
            raise InvalidArgumentError(f"a cascade of {len(rerankers)} rerankers needs depths (how many candidates "
                                       f"each stage reranks, e.g. depths=[100, 20])")
        depths = [None]
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence) or len(depths) != len(rerankers):
        raise InvalidArgumentError(f"depths must list one depth per reranker ({len(rerankers)}), got {depths!r:.80}")
    depths = [check_int(d, f"depths[{i}]", allow_none=i == 0) for i, d in enumerate(depths)]
    for i in range(1, len(depths)):
        if depths[i - 1] is not None and depths[i] > depths[i - 1]:
            raise InvalidArgumentError(f"depths must not grow: stage {i + 1} cannot rerank {depths[i]} candidates "
                                       f"when stage {i} ranked only {depths[i - 1]} (depths {depths})")
    return list(rerankers), depths


class Pipeline:
    """``Pipeline(embedder, retriever, reranker=None)``: first stage, then one reranker (or none:
    first-stage results). ``Pipeline(embedder, retriever, rerankers=[small, large], depths=[100,
    20])``: a cascade (see the module docstring); ``depths`` also limits a single reranker
    (``depths=[20]``). The retriever: ``crossrank.Index``, a store (``crossrank.stores``), a lexical
    retriever or ``crossrank.Hybrid`` of both.

    The embedder must be the artifact that built the retriever's vectors (checked:
    EmbedderMismatchError); it may be None for a retriever that needs no query vectors (lexical).
    """

    def __init__(self, embedder: Embedder | None, retriever: Retriever, reranker: Reranker | None = None, *,
                 rerankers: Sequence[Reranker] | None = None, depths: Sequence[int | None] | None = None):
        check_retriever(retriever)
        if retriever.embedder_info and embedder is not None:
            where = getattr(retriever, "where", None) or getattr(retriever, "path", None) or "(in memory)"
            check_embedder({"dim": int(retriever.embedder_info["dim"]), "embedder": retriever.embedder_info},
                           embedder, where)
        if embedder is None and retriever.needs_vectors:
            raise UsageError(f"{type(retriever).__name__} searches query vectors: give the Pipeline the embedder "
                             f"that built it")
        if reranker is not None and rerankers is not None:
            raise InvalidArgumentError("give reranker= (one model) or rerankers= (a cascade), not both")
        if reranker is not None or rerankers is not None:
            self.rerankers, self.depths = check_cascade([reranker] if reranker is not None else rerankers, depths)
        elif depths is not None:
            raise InvalidArgumentError("depths without rerankers: nothing would rerank the candidates")
        else:
            self.rerankers, self.depths = [], []
        self.embedder = embedder
        self.retriever = retriever

    @property
    def index(self):
        """The retriever (the name of the first stage before retrievers other than Index existed)."""
        return self.retriever

    @property
    def reranker(self) -> Reranker | None:
        """The last (or only) reranking stage's Reranker; None for first-stage search."""
        return self.rerankers[-1] if self.rerankers else None

    def search(self, query: str, k: int = 100, top_n: int | None = 10,
               deadline_ms: float | None = None) -> SearchResult:
        """The ``top_n`` best of ``k`` first-stage candidates (top_n=None: all of them).

        deadline_ms: time allowed for the whole call. Each reranking stage gets what the stages
        before it left and scores its candidates in their current order until the next batch would
        overrun (``Reranker.rerank(deadline_ms=...)``); unscored candidates follow the scored ones
        in that order, and ``result.scored`` says how many the last stage scored.
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

        vectors = self.embedder.embed(list(queries)) if self.retriever.needs_vectors else None
        lap("embed")
        first_stage: dict = {}
        first = self.retriever.retrieve_many(list(queries), vectors, k, first_stage)
        timings["search"] = first_stage.get("search", 0.0)
        timings["fetch"] = first_stage.get("fetch", 0.0)
        last = time.perf_counter()
        documents = [c.documents for c in first]
        orders = [list(range(len(hits.ids))) for hits in first]  # candidate positions, best first
        scores = [[[None] * len(self.rerankers) for _ in hits.ids] for hits in first]
        stages = [[] for _ in first]
        scored = [None] * len(first)
        for number, (reranker, depth) in enumerate(zip(self.rerankers, self.depths)):
            stage_start = time.perf_counter()
            heads = [order[:depth] for order in orders]
            texts = [[docs[i] for i in head] for docs, head in zip(documents, heads)]
            if deadline_ms is None:
                ranked = reranker.rerank_many(list(queries), texts, return_documents=False)
            else:  # search() of one query
                left_ms = max(0.0, deadline_ms - (time.perf_counter() - start) * 1e3)
                ranked = [reranker.rerank(queries[0], texts[0], return_documents=False, deadline_ms=left_ms)]
            ms = (time.perf_counter() - stage_start) * 1e3
            for q, ranking in enumerate(ranked):
                head = heads[q]
                for r in ranking:
                    scores[q][head[r.index]][number] = float(r.score)
                orders[q] = cascade_step(orders[q], depth, [r.index for r in ranking])
                scored[q] = ranking.scored
                stages[q].append({"depth": len(head), "scored": ranking.scored, "ms": ms})
        lap("rerank")
        timings["total"] = (time.perf_counter() - start) * 1e3
        results = []
        for q, (query, hits, docs) in enumerate(zip(queries, first, documents)):
            chosen = []
            for rank, i in enumerate(orders[q][:top_n], start=1):
                stage_scores = tuple(scores[q][i])
                last_score = next((s for s in reversed(stage_scores) if s is not None and not math.isnan(s)),
                                  stage_scores[0] if stage_scores else None)
                chosen.append(SearchHit(hits.ids[i], docs[i], float(hits.scores[i]), last_score, rank, i + 1,
                                        stage_scores, hits.metadata[i] if hits.metadata is not None else None))
            results.append(SearchResult(query, chosen, len(hits.ids), bool(self.rerankers), dict(timings),
                                        len(queries), scored[q], stages[q]))
        return results
