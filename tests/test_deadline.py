"""Deadline-aware reranking, on a deterministic fake clock: time moves only when a batch runs.

Each model call advances the fake clock by (computed tokens x 1 ms), so "a deadline that allows
exactly N batches" is exact arithmetic, not a wall-time guess.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossrank
from crossrank.reranker import RankedList

QUERY = "which passages talk about reranking"
DOCS = [f"passage {i} about reranking: " + "lorem ipsum dolor " * (2 + (i * 7) % 13) for i in range(40)]
MS_PER_TOKEN = 1.0


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def instrumented(path, **options):
    """A Reranker on a fake clock that advances MS_PER_TOKEN per computed token; also records
    each batch's (rows, computed tokens)."""
    reranker = crossrank.Reranker(path, **options)
    clock = FakeClock()
    reranker.clock = clock
    batches = []
    original = reranker.runner._run_batch

    def run_batch(feeds):
        tokens = feeds["input_ids"].size
        batches.append((feeds["input_ids"].shape[0], tokens))
        clock.now += tokens * MS_PER_TOKEN / 1e3
        return original(feeds)

    reranker.runner._run_batch = run_batch
    return reranker, batches


@pytest.fixture(scope="module")
def plain(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross, batch_tokens=256)
    return {r.index: r.score for r in reranker.rerank(QUERY, DOCS)}


@pytest.fixture(scope="module")
def plan(tiny_cross):
    """(rows, tokens) of every in-order batch of DOCS at a 256-token budget."""
    reranker, batches = instrumented(tiny_cross, batch_tokens=256)
    result = reranker.rerank(QUERY, DOCS, deadline_ms=math.inf)
    assert result.scored == len(DOCS)
    assert len(batches) >= 4, "the test needs several batches"
    return batches


def check_ranking(result, scored, plain):
    assert isinstance(result, RankedList) and result.scored == scored
    assert len(result) == len(DOCS)
    head, tail = result[:scored], result[scored:]
    assert sorted(r.index for r in head) == list(range(scored))       # the first docs in caller order
    assert [r.index for r in tail] == list(range(scored, len(DOCS)))  # the rest keep their order
    assert all(math.isnan(r.score) for r in tail)
    assert all(r.document == DOCS[r.index] for r in result)
    scores = [r.score for r in head]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, [plain[r.index] for r in head], atol=1e-5)


def test_infinite_deadline_equals_plain_rerank(tiny_cross, plain):
    reranker, _ = instrumented(tiny_cross, batch_tokens=256)
    result = reranker.rerank(QUERY, DOCS, deadline_ms=math.inf)
    check_ranking(result, len(DOCS), plain)
    top = reranker.rerank(QUERY, DOCS, deadline_ms=math.inf, top_n=5)
    assert [r.index for r in top] == [r.index for r in result[:5]] and top.scored == len(DOCS)


@pytest.mark.parametrize("warm", [False, True], ids=["first-call", "calibrated"])
@pytest.mark.parametrize("allowed", [1, 2, 3])
def test_deadline_allowing_exactly_n_batches(tiny_cross, plan, plain, allowed, warm):
    reranker, batches = instrumented(tiny_cross, batch_tokens=256)
    if warm:  # an earlier call measured the time per token
        reranker.rerank(QUERY, DOCS, deadline_ms=math.inf)
        batches.clear()
    tokens = [t for _, t in plan]
    # enough for `allowed` batches plus half of the next one
    deadline_ms = (sum(tokens[:allowed]) + tokens[allowed] / 2) * MS_PER_TOKEN
    result = reranker.rerank(QUERY, DOCS, deadline_ms=deadline_ms)
    assert batches == plan[:allowed]
    check_ranking(result, sum(rows for rows, _ in plan[:allowed]), plain)


@pytest.mark.parametrize("warm", [False, True], ids=["first-call", "calibrated"])
def test_zero_deadline_scores_nothing(tiny_cross, warm):
    reranker, batches = instrumented(tiny_cross, batch_tokens=256)
    if warm:
        reranker.rerank(QUERY, DOCS, deadline_ms=math.inf)
        batches.clear()
    result = reranker.rerank(QUERY, DOCS, deadline_ms=0)
    assert batches == []
    assert result.scored == 0
    assert [r.index for r in result] == list(range(len(DOCS)))
    assert all(math.isnan(r.score) for r in result)
    assert [r.index for r in reranker.rerank(QUERY, DOCS, deadline_ms=0, top_n=3)] == [0, 1, 2]


def test_chunked_document_counts_only_when_every_window_ran(tiny_cross):
    """A long document whose windows straddle the deadline is not half-scored."""
    long_doc = " ".join(f"word{i}" for i in range(400))
    docs = ["a short passage", long_doc, "another short passage"]
    reference = crossrank.Reranker(tiny_cross, max_length=64, batch_tokens=128, long_documents="chunk")
    want = reference.rerank(QUERY, docs)
    reranker, batches = instrumented(tiny_cross, max_length=64, batch_tokens=128, long_documents="chunk")
    full = reranker.rerank(QUERY, docs, deadline_ms=math.inf)
    assert full.scored == 3 and len(batches) > 2
    np.testing.assert_allclose(sorted(r.score for r in full), sorted(r.score for r in want), atol=1e-5)
    first = batches[0][1]
    batches.clear()
    result = reranker.rerank(QUERY, docs, deadline_ms=first * MS_PER_TOKEN * 1.5)
    assert len(batches) == 1 and batches[0][0] == 2  # the short doc and the long doc's first window
    assert result.scored == 1
    assert [r.index for r in result] == [0, 1, 2]


def test_deadline_arguments(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross)
    for bad in (-1, math.nan, "10", True):
        with pytest.raises(ValueError, match="deadline_ms"):
            reranker.rerank(QUERY, DOCS[:2], deadline_ms=bad)
    empty = reranker.rerank(QUERY, [], deadline_ms=10)
    assert empty == [] and empty.scored == 0
    with pytest.raises(TypeError, match="query must be a str"):
        reranker.rerank(None, DOCS[:2], deadline_ms=10)


def test_plain_rerank_reports_everything_scored(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross)
    result = reranker.rerank(QUERY, DOCS[:5], top_n=2)
    assert isinstance(result, list) and len(result) == 2 and result.scored == 5
    assert result == list(result)  # still compares as a plain list of Ranked
