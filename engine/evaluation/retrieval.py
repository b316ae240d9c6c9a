"""Retrieval evaluation on the bundled Semanlink data: its index, and metrics over a Pipeline.

Used by ``crossrank eval`` / ``make demo`` (front wing) and by the starter reranker's training
recipe and report (``crossrank.export.starter``, benchmarks).
"""

from __future__ import annotations

from pathlib import Path

from crossrank.errors import IndexFormatError
from crossrank.evaluation.datasets import load_semanlink
from crossrank.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from crossrank.index import Index

SEMANLINK_CORPUS = "semanlink (cherche==2.2.1)"


def build_semanlink_index(embedder, out: str | Path, dtype: str = "f16", progress: bool = True,
                          **build_options) -> Index:
    """Index every Semanlink document (ids = their URLs) with ``embedder`` and save it to ``out``.

    build_options: more keyword arguments of ``Index.build`` (connectivity, batch_size, ...).
    """
    documents, _ = load_semanlink()
    index = Index.build(embedder, [d.text for d in documents], [d.id for d in documents],
                        dtype=dtype, progress=progress, **build_options)
    index.metadata["corpus"] = SEMANLINK_CORPUS
    index.save(out)
    return index


def ensure_semanlink_index(embedder, out: str | Path, dtype: str = "f16",
                           progress: bool = True) -> tuple[Index, bool]:
    """The Semanlink index at ``out`` if it was built by this embedder and is whole; else build it.

    Returns (index, reused). A stale or damaged cache is rebuilt, never trusted.
    """
    try:
        index = Index.load(out, view=True, embedder=embedder)
        if index.metadata.get("corpus") == SEMANLINK_CORPUS and len(index) == len(load_semanlink()[0]) \
                and index.dtype == dtype:
            return index, True
    except (IndexFormatError, ValueError):
        pass
    return build_semanlink_index(embedder, out, dtype=dtype, progress=progress), False


def evaluate(pipeline, queries, k: int = 100, batch: int = 8, progress: bool = False) -> dict:
    """Mean metrics over queries (objects with .text and .relevant): {"first_stage": {...}, "reranked": {...}}.

    "reranked" is present only when the pipeline has a reranker. recall@100 needs k >= 100 (else
    recall@k is reported).
    """
    deep = min(k, 100)
    names = ("ndcg@10", "mrr@10", "recall@10", f"recall@{deep}")
    totals = {"first_stage": dict.fromkeys(names, 0.0)}
    if pipeline.reranker is not None:
        totals["reranked"] = dict.fromkeys(names, 0.0)
    bar = None
    if progress:
        from crossrank.progress import progress_bar

        bar = progress_bar(total=len(queries), unit="query", desc="evaluating")
    for start in range(0, len(queries), batch):
        part = queries[start: start + batch]
        for query, result in zip(part, pipeline.search_many([q.text for q in part], k=k, top_n=None)):
            rankings = {"first_stage": [h.id for h in sorted(result.hits, key=lambda h: h.first_stage_rank)]}
            if "reranked" in totals:
                rankings["reranked"] = result.ids
            for stage, ranked in rankings.items():
                relevant = set(query.relevant)
                totals[stage]["ndcg@10"] += ndcg_at_k(ranked, relevant, 10)
                totals[stage]["mrr@10"] += mrr_at_k(ranked, relevant, 10)
                totals[stage]["recall@10"] += recall_at_k(ranked, relevant, 10)
                totals[stage][f"recall@{deep}"] += recall_at_k(ranked, relevant, deep)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return {stage: {name: value / max(len(queries), 1) for name, value in figures.items()}
            for stage, figures in totals.items()}


__all__ = ["SEMANLINK_CORPUS", "build_semanlink_index", "ensure_semanlink_index", "evaluate"]
