"""Ranking and agreement metrics in plain numpy (used by export fidelity, eval and benchmarks)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def rankdata(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing their mean rank, like scipy.stats.rankdata."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0


def top_k_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Overlap of the two top-k index sets, as a fraction of k."""
    k = min(k, len(reference))
    top_ref = set(np.argsort(-np.asarray(reference), kind="stable")[:k].tolist())
    top_cand = set(np.argsort(-np.asarray(candidate), kind="stable")[:k].tolist())
    return len(top_ref & top_cand) / k


def dcg(gains: Sequence[float]) -> float:
    gains = np.asarray(gains, dtype=np.float64)
    return float((gains / np.log2(np.arange(2, len(gains) + 2))).sum())


def ndcg_at_k(ranked_ids: Sequence, relevant: set, k: int = 10) -> float:
    gains = [1.0 if doc in relevant else 0.0 for doc in list(ranked_ids)[:k]]
    ideal = dcg([1.0] * min(k, len(relevant)))
    return dcg(gains) / ideal if ideal > 0 else 0.0


def mrr_at_k(ranked_ids: Sequence, relevant: set, k: int = 10) -> float:
    for rank, doc in enumerate(list(ranked_ids)[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked_ids: Sequence, relevant: set, k: int) -> float:
    if not relevant:
        return 0.0
    return len(set(list(ranked_ids)[:k]) & relevant) / len(relevant)
