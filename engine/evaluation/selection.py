"""Quality of many reranking configurations from one pass of each model: the core of
``crossrank select``.

A configuration is a chain of rerankers with depths: () is the first stage alone, ("A",) with (20,)
reranks the first stage's top 20 with A, ("A", "C") with (100, 20) is a cascade. Because a pair's
score depends only on the pair and the model (never on its batch mates), every configuration's
ranking can be computed from each model's scores of the first stage's top ``max depth`` candidates,
scored once: a config's ranking is what ``Pipeline(rerankers=..., depths=...)`` returns, without
running it again per configuration. ``crossrank select`` checks that on sample queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crossrank.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from crossrank.pipeline import cascade_step
from crossrank.reranker import best_first


@dataclass(frozen=True)
class Config:
    """A chain of rerankers (names) and how many candidates each reranks."""

    rerankers: tuple[str, ...] = ()
    depths: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        if not self.rerankers:
            return "first stage only"
        return " > ".join(f"{r}@{d}" for r, d in zip(self.rerankers, self.depths))

    @property
    def pairs(self) -> int:
        """Pairs scored per query (at most: a query may have fewer candidates)."""
        return sum(self.depths)


def rank_candidates(config: Config, scores: dict[str, np.ndarray]) -> list[int]:
    """Positions of one query's first-stage candidates in the order ``config`` puts them, given
    each reranker's scores of the top candidates (``scores[name][i]``, nan beyond what it scored)."""
    n = max((len(s) for s in scores.values()), default=0)
    order = list(range(n))
    for name, depth in zip(config.rerankers, config.depths):
        order = cascade_step(order, depth, best_first(np.asarray(scores[name])[order[:depth]]))
    return order


def ranked_ids(config: Config, ids: list, scores: dict[str, np.ndarray]) -> list:
    """One query's candidate ids in the order ``config`` puts them (what its Pipeline returns)."""
    if not config.rerankers:
        return list(ids)
    order = rank_candidates(config, scores)
    return [ids[i] for i in order] + list(ids[len(order):])


def config_metrics(config: Config, candidate_ids: list[list], scores: list[dict[str, np.ndarray]],
                   relevant: list[set]) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and recall@10 of ``config`` over queries (same candidates for all)."""
    totals = {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0}
    for ids, query_scores, wanted in zip(candidate_ids, scores, relevant):
        ranked = ranked_ids(config, ids, query_scores)
        totals["ndcg@10"] += ndcg_at_k(ranked, wanted, 10)
        totals["mrr@10"] += mrr_at_k(ranked, wanted, 10)
        totals["recall@10"] += recall_at_k(ranked, wanted, 10)
    return {name: value / max(len(candidate_ids), 1) for name, value in totals.items()}


@dataclass
class Point:
    """One configuration's figures: quality (higher is better) and latency (lower is better)."""

    config: Config
    quality: float
    latency_ms: float
    figures: dict = field(default_factory=dict)
    pareto: bool = False


def mark_pareto(points: list[Point]) -> list[Point]:
    """Set ``pareto`` on the points no other point dominates (at most the latency and at least the
    quality, better in one). Returns the front, fastest first."""
    for point in points:
        point.pareto = not any(
            other is not point and other.latency_ms <= point.latency_ms and other.quality >= point.quality
            and (other.latency_ms < point.latency_ms or other.quality > point.quality)
            for other in points)
    return sorted((p for p in points if p.pareto), key=lambda p: p.latency_ms)


def best_within(points: list[Point], budget_ms: float | None, latency_key: str = "p95_ms") -> Point | None:
    """The highest-quality point whose ``figures[latency_key]`` is within the budget (ties: faster)."""
    within = [p for p in points if budget_ms is None or p.figures.get(latency_key, p.latency_ms) <= budget_ms]
    return max(within, key=lambda p: (p.quality, -p.latency_ms)) if within else None


__all__ = ["Config", "Point", "best_within", "config_metrics", "mark_pareto", "rank_candidates", "ranked_ids"]
