"""The shared batch scheduler (crossrank.scheduler) alone, in process.

Exactness on the real trained starter reranker in fp32 (batch-invariant: a row's score does not
depend on its batch mates) and in int8 (the default recipe's per-row scales: batch-invariant too);
the real MiniLM embedder in fp32 up to float rounding. Fairness, deadlines, cancellation
and the bounded queue on the tiny generated cross-encoder, with the worker paused at a gate or
time moved by a fake clock, so each ordering is forced rather than raced.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

import crossrank
from crossrank.errors import CrossrankError, InvalidArgumentError, OverloadedError, UsageError
from crossrank.scheduler import Scheduler

QUERY = "which passages talk about reranking"
DOCS = [f"passage {i} about reranking: " + "lorem ipsum dolor " * (2 + (i * 7) % 13) for i in range(40)]


def mixed_requests(trec_rag, n: int, sizes=(1, 2, 4, 7)) -> list[tuple[str, list[str]]]:
    return [(r["query"], r["documents"][: sizes[i % len(sizes)]]) for i, r in enumerate(trec_rag[10: 10 + n])]


def same_ranking(got, want) -> bool:
    return [(r.index, r.score, r.document) for r in got] == [(r.index, r.score, r.document) for r in want]


# -- exactness (fp32, real models) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def starter_plain(starter_fp32):
    return crossrank.Reranker(starter_fp32)


@pytest.fixture(scope="module")
def starter_shared(starter_fp32):
    reranker = crossrank.Reranker(starter_fp32, shared=True)
    yield reranker
    reranker.close()


def test_concurrent_threads_get_exactly_their_own_answers(starter_plain, starter_shared, trec_rag):
    requests = mixed_requests(trec_rag, 8)
    plain_before = starter_plain.runner.stats.batches
    want = [starter_plain.rerank(q, docs) for q, docs in requests]
    plain_batches = starter_plain.runner.stats.batches - plain_before
    reports = []
    starter_shared.scheduler.add_listener(reports.append)
    gate = Gate(starter_shared)  # the worker waits in a first small call while every request queues
    blocker, _ = in_thread(starter_shared.rerank, "warm up", ["warm up"])
    assert gate.entered.wait(60)
    calls = [in_thread(starter_shared.rerank, q, docs) for q, docs in requests]
    wait_for(lambda: starter_shared.scheduler.queued_requests == len(requests) + 1)
    gate.release()
    blocker.join()
    for i, ((thread, out), w) in enumerate(zip(calls, want)):
        thread.join()
        assert same_ranking(out["result"], w), f"request {i}: shared answer differs from the single-request answer"
        assert out["result"].scored == len(requests[i][1])
    model_calls = len(reports) - 1  # less the blocker's
    assert max(r.requests for r in reports) >= 2, "no batch held rows of two requests"
    assert model_calls < plain_batches, f"{model_calls} shared model calls vs {plain_batches} one request at a time"
    assert sum(r.rows for r in reports) == sum(len(d) for _, d in requests) + 1  # none lost, none run twice
    assert starter_shared.scheduler.queued_tokens == 0 and starter_shared.scheduler.queued_requests == 0


def test_async_callers_and_score(starter_plain, starter_shared, trec_rag):
    requests = mixed_requests(trec_rag, 4)

    async def main():
        reranked = asyncio.gather(*[starter_shared.arerank(q, d, top_n=3) for q, d in requests])
        pairs = [(q, doc) for q, docs in requests for doc in docs]
        scored = starter_shared.ascore(pairs)
        return await reranked, await scored, pairs

    got, scores, pairs = asyncio.run(main())
    for (q, docs), g in zip(requests, got):
        assert same_ranking(g, starter_plain.rerank(q, docs, top_n=3))
    np.testing.assert_array_equal(scores, starter_plain.score(pairs))


def test_workers_side_by_side_on_a_one_thread_session_are_exact(starter_fp32, starter_plain, trec_rag):
    reranker = crossrank.Reranker(starter_fp32, threads=1, shared=True, workers=2)
    requests = mixed_requests(trec_rag, 6)
    calls = [in_thread(reranker.rerank, q, docs) for q, docs in requests]
    for (thread, out), (q, docs) in zip(calls, requests):
        thread.join()
        assert same_ranking(out["result"], starter_plain.rerank(q, docs))
    assert reranker.scheduler.workers == 2 and reranker.scheduler.queued_tokens == 0
    reranker.close()


def test_shared_embedder_matches_to_float_rounding(bi_fp32, trec_rag):
    """The fp32 bi-encoder graph is batch-invariant only up to float rounding: a text's vector moves
    by about one ulp (1.5e-8 measured) when the batch goes from 1 row to 2, whatever the mate (the
    cross-encoder's scores do not move at all). Merged requests must stay within that rounding."""
    plain = crossrank.Embedder(bi_fp32)
    shared = crossrank.Embedder(bi_fp32, shared=True)
    texts = [[d for d in r["documents"][: 3 + i]] for i, r in enumerate(trec_rag[:6])]

    async def main():
        return await asyncio.gather(*[shared.aembed(t) for t in texts])

    for got, t in zip(asyncio.run(main()), texts):
        np.testing.assert_allclose(got, plain.embed(t), rtol=0, atol=1e-6)
    shared.close()


def test_shared_int8_reranker_scores_as_each_request_alone(starter_int8, trec_rag):
    """The default int8 recipe is batch-invariant (per-row activation scales), so merging requests
    into shared batches moves no score: each request's scores equal those of the request scored
    alone, within the batch-invariance tolerance (1e-5 in logit; tests/test_batch_invariance.py),
    even with a large budget that packs rows of many requests, and a 512-token mate, together."""
    plain = crossrank.Reranker(starter_int8)
    shared = crossrank.Reranker(starter_int8, shared=True, batch_tokens=1 << 14)
    long_mate = " ".join(sorted({d for r in trec_rag for d in r["documents"]}, key=len)[-4:])
    requests = mixed_requests(trec_rag, 8) + [(trec_rag[3]["query"], [long_mate] + trec_rag[3]["documents"][:2])]
    want = [plain.rerank(q, docs, raw_scores=True) for q, docs in requests]
    reports = []
    shared.scheduler.add_listener(reports.append)
    gate = Gate(shared)  # the worker waits in a first small call while every request queues
    blocker, _ = in_thread(shared.rerank, "warm up", ["warm up"])
    assert gate.entered.wait(60)
    calls = [in_thread(shared.rerank, q, docs, raw_scores=True) for q, docs in requests]
    wait_for(lambda: shared.scheduler.queued_requests == len(requests) + 1)
    gate.release()
    blocker.join()
    worst = 0.0
    for i, ((thread, out), w) in enumerate(zip(calls, want)):
        thread.join()
        got = {r.index: r.score for r in out["result"]}
        assert sorted(got) == sorted(r.index for r in w), f"request {i}: documents lost or added"
        worst = max(worst, max(abs(got[r.index] - r.score) for r in w))
    assert max(r.requests for r in reports) >= 4, "no batch held rows of several requests"
    assert worst <= 1e-5, f"a shared batch moved an int8 logit by {worst:.3g}"
    shared.close()


# -- scheduling (tiny model, forced orderings) -----------------------------------------------------

class Gate:
    """Pauses the worker inside its first model call until ``release()``; counts calls and rows."""

    def __init__(self, reranker, hold: bool = True):
        self.entered, self.opened = threading.Event(), threading.Event()
        self.rows = 0
        self.calls = 0
        if not hold:
            self.opened.set()
        original = reranker.runner._run_batch

        def run_batch(feeds):
            self.calls += 1
            self.entered.set()
            self.opened.wait(timeout=60)
            self.rows += feeds["input_ids"].shape[0]
            return original(feeds)

        reranker.runner._run_batch = run_batch

    def release(self) -> None:
        self.opened.set()


def wait_for(condition, seconds: float = 60) -> None:
    """Poll until ``condition()`` holds (a bounded wait for another thread to get somewhere)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the other threads"
        time.sleep(0.005)


def in_thread(function, *args, **kwargs):
    out = {}

    def target():
        try:
            out["result"] = function(*args, **kwargs)
        except BaseException as err:
            out["error"] = err
        out["finished"] = time.perf_counter()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def test_small_request_behind_a_huge_one_finishes_first(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross, shared=True, batch_tokens=256)
    reference = crossrank.Reranker(tiny_cross, batch_tokens=256)
    huge_docs = DOCS * 15  # 600 documents
    gate = Gate(reranker)
    huge, huge_out = in_thread(reranker.rerank, QUERY, huge_docs)
    assert gate.entered.wait(30)  # the worker is inside the huge request's first batch
    smalls = [in_thread(reranker.rerank, f"small query {i}", DOCS[i: i + 3]) for i in range(5)]
    wait_for(lambda: reranker.scheduler.queued_requests == 6)
    gate.release()
    for thread, _ in smalls:
        thread.join()
    huge.join()
    for i, (_, out) in enumerate(smalls):
        assert out["finished"] < huge_out["finished"], f"small request {i} waited for the huge one"
        assert same_ranking(out["result"], reference.rerank(f"small query {i}", DOCS[i: i + 3]))
    assert huge_out["result"].scored == len(huge_docs)
    np.testing.assert_allclose(sorted(r.score for r in huge_out["result"]),
                               sorted(r.score for r in reference.rerank(QUERY, huge_docs)), atol=1e-5)
    reranker.close()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ticking(reranker, ms_per_token: float = 1.0):
    """The reranker's deadlines on a fake clock that each model call advances by its tokens."""
    clock = FakeClock()
    reranker.clock = clock
    batches = []
    original = reranker.runner._run_batch

    def run_batch(feeds):
        batches.append(feeds["input_ids"].shape)
        clock.now += feeds["input_ids"].size * ms_per_token / 1e3
        return original(feeds)

    reranker.runner._run_batch = run_batch
    return clock, batches


@pytest.mark.parametrize("allowed", [1, 2])
def test_deadline_scores_the_leading_documents_that_fit(tiny_cross, allowed):
    reranker = crossrank.Reranker(tiny_cross, shared=True, batch_tokens=256)
    plain = {r.index: r.score for r in crossrank.Reranker(tiny_cross, batch_tokens=256).rerank(QUERY, DOCS)}
    _, batches = ticking(reranker)
    full = reranker.rerank(QUERY, DOCS, deadline_ms=math.inf)  # also calibrates the time per token
    assert full.scored == len(DOCS) and len(batches) >= 4
    plan = list(batches)
    batches.clear()
    deadline_ms = sum(rows * width for rows, width in plan[:allowed]) + plan[allowed][0] * plan[allowed][1] / 2
    result = reranker.rerank(QUERY, DOCS, deadline_ms=deadline_ms)
    assert batches == plan[:allowed]
    scored = sum(rows for rows, _ in plan[:allowed])
    assert result.scored == scored
    assert sorted(r.index for r in result[:scored]) == list(range(scored))       # the leading documents
    assert [r.index for r in result[scored:]] == list(range(scored, len(DOCS)))  # the rest, in order, nan
    assert all(math.isnan(r.score) for r in result[scored:])
    np.testing.assert_allclose([r.score for r in result[:scored]], [plain[r.index] for r in result[:scored]],
                               atol=1e-5)
    reranker.close()


def test_deadline_counts_the_time_spent_waiting_behind_others(tiny_cross):
    """A request whose deadline passes while a huge request runs comes back with what fitted;
    the huge request is not affected."""
    reranker = crossrank.Reranker(tiny_cross, shared=True, batch_tokens=256)
    ticking(reranker)
    gate = Gate(reranker)  # wraps the ticking call: the worker pauses in the huge request's first batch
    huge, huge_out = in_thread(reranker.rerank, QUERY, DOCS * 5)
    assert gate.entered.wait(30)
    late, late_out = in_thread(reranker.rerank, "a request in a hurry", DOCS[:10], deadline_ms=1.0)
    wait_for(lambda: reranker.scheduler.queued_requests == 2)
    gate.release()  # the huge request's batch moves the clock past the 1 ms deadline
    late.join()
    huge.join()
    assert late_out["result"].scored == 0
    assert [r.index for r in late_out["result"]] == list(range(10))
    assert huge_out["result"].scored == len(DOCS) * 5
    assert reranker.scheduler.queued_tokens == 0
    reranker.close()


def test_cancelled_future_drops_its_rows(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross, shared=True, batch_tokens=256)
    gate = Gate(reranker)
    rows = reranker._encode_pre([QUERY], np.zeros(400, dtype=np.int64), (DOCS * 10))[0]
    future = reranker.scheduler.submit(rows)
    assert gate.entered.wait(30)
    assert future.cancel()
    assert reranker.scheduler.queued_tokens == 0 and reranker.scheduler.queued_requests == 0
    gate.release()
    # the worker finishes the batch it was in, then nothing more of the cancelled request runs
    after = reranker.rerank(QUERY, DOCS[:2])
    assert len(after) == 2
    assert gate.rows <= 256 // int(rows.lengths.min()) + 2, f"{gate.rows} rows ran of a cancelled request"
    reranker.close()


def test_cancelled_asyncio_task_drops_its_rows(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross, shared=True, batch_tokens=256)
    gate = Gate(reranker)

    async def main():
        task = asyncio.ensure_future(reranker.arerank(QUERY, DOCS * 10))
        while not gate.entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # the cancellation reaches the queue from the task's thread
            if reranker.scheduler.queued_requests == 0:
                break
            await asyncio.sleep(0.01)
        gate.release()

    asyncio.run(main())
    assert reranker.scheduler.queued_tokens == 0
    assert [r.index for r in reranker.rerank(QUERY, DOCS[:3], top_n=1)] != []
    assert gate.rows < 400 // 4, f"{gate.rows} of 400 rows ran for a cancelled task"
    reranker.close()


def test_full_queue_refuses_at_once_then_recovers(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross, shared=True, batch_tokens=256, max_queue_tokens=1000)
    gate = Gate(reranker)
    first, first_out = in_thread(reranker.rerank, QUERY, DOCS)  # > 1000 tokens: admitted into the empty queue
    assert gate.entered.wait(30)
    with pytest.raises(OverloadedError, match="max_queue_tokens 1000") as caught:
        reranker.rerank(QUERY, DOCS[:5])  # refused while the worker is still paused: nothing waited
    assert not gate.opened.is_set() and "result" not in first_out
    assert isinstance(caught.value, CrossrankError) and caught.value.retry_after_s >= 1
    gate.release()
    first.join()
    assert first_out["result"].scored == len(DOCS)
    assert reranker.scheduler.queued_tokens == 0
    assert len(reranker.rerank(QUERY, DOCS[:5])) == 5
    reranker.close()


def test_one_request_runs_on_every_worker_side_by_side(tiny_cross):
    """A lone request on a shallow queue is shared out across the workers: its batches run at
    once on both (each of the first two model calls waits for the other at a barrier, which
    breaks, failing the request, if the second worker never starts), with the unshared scores."""
    reranker = crossrank.Reranker(tiny_cross, threads=1, shared=True, workers=2, batch_tokens=256)
    reference = crossrank.Reranker(tiny_cross, threads=1, batch_tokens=256)
    both = threading.Barrier(2, timeout=30)
    original, calls = reranker.runner._run_batch, []

    def run_batch(feeds):
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            both.wait()
        return original(feeds)

    reranker.runner._run_batch = run_batch
    got = reranker.rerank(QUERY, DOCS)
    assert len(set(calls)) == 2, f"one request ran on {sorted(set(calls))} only"
    np.testing.assert_array_equal([r.score for r in got], [r.score for r in reference.rerank(QUERY, DOCS)])
    assert reranker.scheduler.queued_tokens == 0 and reranker.scheduler._queue.untaken_tokens == 0
    reranker.close()


def test_options_and_lifecycle(tiny_cross):
    with pytest.raises(InvalidArgumentError, match="shared=True"):
        crossrank.Reranker(tiny_cross, max_queue_tokens=100)
    with pytest.raises(InvalidArgumentError, match="shared=True"):
        crossrank.Reranker(tiny_cross, workers=2)
    with pytest.raises(InvalidArgumentError, match="workers"):
        crossrank.Reranker(tiny_cross, shared=True, workers=0)
    with pytest.raises(InvalidArgumentError, match="max_queue_tokens"):
        crossrank.Reranker(tiny_cross, shared=True, max_queue_tokens=0)
    with pytest.raises(TypeError, match="shared"):
        crossrank.Reranker(tiny_cross, shared="yes")
    reranker = crossrank.Reranker(tiny_cross, shared=True)
    assert reranker.rerank(QUERY, []) == [] and reranker.score([]).shape == (0,)
    reranker.close()
    with pytest.raises(UsageError, match="closed"):
        reranker.rerank(QUERY, DOCS[:2])
    with pytest.raises(InvalidArgumentError, match="order"):
        Scheduler(crossrank.Reranker(tiny_cross).runner, 0).submit(None, order="random")


# -- one core budget for several models (issue 23) ------------------------------------------------

def test_core_budget_lets_one_call_run_at_a_time_first_come_first_served():
    budget = crossrank.CoreBudget(1)
    order, holder_in, release = [], threading.Event(), threading.Event()

    def holder():
        with budget:
            holder_in.set()
            release.wait(30)

    def waiter(name):
        with budget:
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    assert holder_in.wait(30)
    waiters = []
    for name in ("a", "b", "c"):
        waiters.append(threading.Thread(target=waiter, args=(name,)))
        waiters[-1].start()
        wait_for(lambda: len(budget._waiting) == len(waiters))  # queued in this order
    release.set()
    for t in [first, *waiters]:
        t.join(30)
    assert order == ["a", "b", "c"] and budget.waited_seconds > 0
    with pytest.raises(InvalidArgumentError, match="slots"):
        crossrank.CoreBudget(0)


def test_models_sharing_a_core_budget_never_run_at_once(tiny_cross):
    budget = crossrank.CoreBudget(1)
    models = [crossrank.Reranker(tiny_cross, shared=True, batch_tokens=64, core_budget=budget) for _ in range(2)]
    running, most, lock = [0], [0], threading.Lock()
    for model in models:
        original = model.runner._run_batch

        def run_batch(feeds, original=original):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.002)
            try:
                return original(feeds)
            finally:
                with lock:
                    running[0] -= 1

        model.runner._run_batch = run_batch
    want = [models[0].rerank(QUERY, DOCS[:12]), models[1].rerank(QUERY, DOCS[12:24])]
    got = [None, None]

    def call(i):
        got[i] = models[i].rerank(QUERY, DOCS[12 * i: 12 * i + 12])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 1 and got == want
    assert models[0].describe()["sharing"]["core_budget_slots"] == 1
    for model in models:
        model.close()
