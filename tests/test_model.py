"""The models' public face (crossrank.model.Model): session options with their origins, the one
executor protocol, describe(), token counts carried by results, cuts applied on token ids."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest

import crossrank
from crossrank.errors import ArgumentTypeError, InvalidArgumentError, UsageError
from crossrank.runner import BatchRunner, Executor
from crossrank.scheduler import Scheduler
from crossrank.settings import RUNTIME_FILE, SessionOptions, default_options

DOCS = ["TransE embeds entities and relations of a knowledge graph as vectors in one space.",
        "A recipe for sourdough bread: flour, water, salt and a starter kept alive for years. " * 6,
        "short"]


@pytest.fixture(scope="module")
def tiny(tiny_cross):
    return crossrank.Reranker(tiny_cross, max_length=64)


def test_session_options_are_checked_frozen_and_hashable():
    with pytest.raises(InvalidArgumentError, match="threads must be an integer in"):
        SessionOptions(threads=0)
    with pytest.raises(InvalidArgumentError, match="spinning 'sometimes' is not one of"):
        SessionOptions(spinning="sometimes")
    with pytest.raises(ArgumentTypeError, match="memory_arena must be True or False"):
        SessionOptions(memory_arena="no")
    options = SessionOptions(threads=1, optimization="basic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threads = 2
    assert {options: 1}[SessionOptions(threads=1, optimization="basic")] == 1
    assert options.chosen() == {"threads": 1, "optimization": "basic"} and not options.resolved
    with pytest.raises(InvalidArgumentError, match=r"threads is given twice: threads=2 and options.threads=1"):
        options.merged(threads=2)
    assert options.merged(threads=1, batch_tokens=256).chosen() == {"threads": 1, "optimization": "basic",
                                                                   "batch_tokens": 256}


def test_each_option_says_where_it_came_from(tiny_cross):
    (tiny_cross / RUNTIME_FILE).write_text(json.dumps({"format": 1, "cpu": {"batch_tokens": 1024}}))
    try:
        reranker = crossrank.Reranker(tiny_cross, threads=1, options=SessionOptions(spinning="always"))
    finally:
        (tiny_cross / RUNTIME_FILE).unlink()
    options = reranker.options
    # backend and precision: the ISA rule's for an fp32 artifact on this CPU without a bf16 certificate
    assert options.resolved and options.values() == {**default_options("cpu"), "threads": 1, "batch_tokens": 1024,
                                                     "spinning": "always", "precision": "fp32"}
    assert dict(options.origin) == {"threads": "argument", "batch_tokens": RUNTIME_FILE, "io_binding": "default",
                                    "memory_arena": "default", "optimization": "default", "spinning": "argument",
                                    "profile_prefix": "default", "backend": "default", "precision": "default",
                                    "allow_low_fidelity": "default"}
    # the session runs with them
    session = reranker.runner.session
    assert session.get_session_options().intra_op_num_threads == 1 and reranker.runner.batch_tokens == 1024
    with pytest.raises(InvalidArgumentError, match="batch_tokens is given twice"):
        crossrank.Reranker(tiny_cross, batch_tokens=512, options=SessionOptions(batch_tokens=256))
    with pytest.raises(ArgumentTypeError, match="options must be a crossrank.SessionOptions"):
        crossrank.Embedder(tiny_cross, options={"threads": 1})


def test_batch_runner_and_scheduler_are_the_one_executor(tiny):
    scheduler = Scheduler(tiny.runner, tiny.tokenizer.pad_id)
    try:
        assert isinstance(tiny.runner, Executor) and isinstance(scheduler, Executor)
        protocol = inspect.signature(Executor.run)
        for executor in (BatchRunner, Scheduler):
            own = inspect.signature(executor.run)
            assert list(own.parameters) == list(protocol.parameters), executor
            assert [p.default for p in own.parameters.values()][-2:] == ["length", None]
    finally:
        scheduler.close()


def test_describe_stats_and_sharing(tiny_cross):
    plain = crossrank.Reranker(tiny_cross, threads=1)
    described = plain.describe()
    manifest = json.loads((tiny_cross / "manifest.json").read_text())
    assert described["kind"] == "cross" and described["path"] == str(tiny_cross)
    assert described["manifest"] == {"kind": "cross", "precision": "fp32", "max_length": manifest["max_length"],
                                     "source": manifest["source"]["name"], "int8_recipe": None,
                                     "sha256": manifest["files"]["model.onnx"], "activation": "sigmoid"}
    assert described["options"] == plain.options.values() and described["origin"]["threads"] == "argument"
    assert described["sharing"] == {"shared": False, "max_queue_tokens": None, "workers": None,
                                    "core_budget_slots": None}
    assert described["long_documents"] == "truncate"
    assert described["scores"] == "sigmoid" and described["calibration"] is None
    json.dumps(described)  # plain JSON values
    with pytest.raises(UsageError, match="shared=True"):
        plain.add_batch_listener(print)
    plain.rerank("query", DOCS)
    stats = plain.stats()
    assert stats.rows == 3 and stats.batches >= 1 and stats.real_tokens <= stats.computed_tokens
    assert plain.padding_fraction == stats.padding_fraction
    plain.reset_stats()
    assert plain.stats() == crossrank.RunTotals()
    shared = crossrank.Reranker(tiny_cross, shared=True, workers=2, max_queue_tokens=5000)
    try:
        assert shared.describe()["sharing"] == {"shared": True, "max_queue_tokens": 5000, "workers": 2,
                                                "core_budget_slots": None}
        reports = []
        shared.add_batch_listener(reports.append)
        shared.rerank("query", DOCS)
        assert sum(r.rows for r in reports) == 3 and shared.queued_tokens == shared.queued_requests == 0
        assert shared.stats().rows == 3
    finally:
        shared.close()


def test_results_carry_their_tokens(tiny, bi_fp32):
    lengths = tiny.token_lengths([("query", d) for d in DOCS])
    assert len(lengths) == 3 and lengths[1] == tiny.max_length
    ranking = tiny.rerank("query", DOCS)
    assert ranking.tokens == int(lengths.sum()) and ranking.scored == 3
    many = tiny.rerank_many(["query", "other query"], [DOCS, DOCS[:1]])
    assert many[0].tokens == ranking.tokens
    assert many[1].tokens == int(tiny.token_lengths([("other query", DOCS[0])]).sum())
    late = tiny.rerank("query", DOCS, deadline_ms=float("inf"))
    assert late.tokens == ranking.tokens and [r.index for r in late] == [r.index for r in ranking]
    embedder = crossrank.Embedder(bi_fp32)
    vectors, tokens, truncated, dropped = embedder.embed_with_usage(DOCS)
    np.testing.assert_array_equal(vectors, embedder.embed(DOCS))
    assert tokens == int(embedder.token_lengths(DOCS).sum()) and embedder.describe()["manifest"]["dim"] == 384
    assert (truncated, dropped) == (0, 0)  # short texts: whole


def test_max_tokens_per_doc_cuts_token_ids(tiny):
    """Cutting at n token ids scores as the text cut at the n-th token's end (WordPiece)."""
    encodings = tiny.tokenizer.tokenizer.encode_batch(DOCS, add_special_tokens=False)
    cut = [d[: e.offsets[7][1]] if len(e.ids) > 8 else d for d, e in zip(DOCS, encodings)]
    got = tiny.rerank("query", DOCS, raw_scores=True, max_tokens_per_doc=8)
    want = tiny.rerank("query", cut, raw_scores=True)
    assert [(r.index, r.score) for r in got] == [(r.index, r.score) for r in want]
    assert got.tokens == want.tokens < tiny.rerank("query", DOCS).tokens
    with pytest.raises(InvalidArgumentError, match="max_tokens_per_doc must be a positive integer"):
        tiny.rerank("query", DOCS, max_tokens_per_doc=0)


def test_max_chunks_per_doc_scores_the_best_of_the_first_windows(tiny_cross):
    truncate = crossrank.Reranker(tiny_cross, max_length=32)
    chunk = crossrank.Reranker(tiny_cross, max_length=32, long_documents="chunk")
    long_doc = DOCS[1]
    windows = len(chunk.token_lengths([("query", long_doc)]))
    assert windows > 3
    first = truncate.score([("query", long_doc)], raw_scores=True)[0]
    assert truncate.rerank("query", [long_doc], raw_scores=True, max_chunks_per_doc=1)[0].score == first
    all_windows = chunk.rerank("query", [long_doc], raw_scores=True)
    assert truncate.rerank("query", [long_doc], raw_scores=True, max_chunks_per_doc=windows)[0].score == \
        all_windows[0].score
    two = truncate.rerank("query", [long_doc], raw_scores=True, max_chunks_per_doc=2)
    assert two.tokens == int(chunk.token_lengths([("query", long_doc)])[:2].sum())
    assert first <= two[0].score <= all_windows[0].score


def test_profiling_through_session_options(tiny_cross, tmp_path):
    reranker = crossrank.Reranker(tiny_cross, options=SessionOptions(profile_prefix=tmp_path / "profile"))
    reranker.score([("query", d) for d in DOCS])
    trace = reranker.end_profiling()
    assert trace.parent == tmp_path and any(e.get("cat") == "Node" for e in json.loads(trace.read_text()))
    with pytest.raises(UsageError, match="profile_prefix"):
        crossrank.Reranker(tiny_cross).end_profiling()


def test_result_types_and_their_earlier_names():
    assert crossrank.Ranked is crossrank.RankedDocument and crossrank.RankedList is crossrank.Ranking
    assert crossrank.Hits is crossrank.Neighbors and crossrank.Hit is crossrank.SearchHit
