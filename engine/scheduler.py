"""The shared batch scheduler: many concurrent callers, one model, one worker thread.

A ``Scheduler`` owns a model's ``BatchRunner`` (its ONNX session) and its worker thread (or
``workers`` threads sharing the one queue and session, one window each). Callers — threads, or asyncio
tasks through ``run_async`` — submit token rows (``submit`` returns a Future; ``run`` waits for
it, with ``BatchRunner.run``'s signature and result). The worker thread takes queued rows
round-robin across requests, one row per request per turn, until it holds ``window_batches``
batches' worth of tokens; cuts that window into token-budget batches with the one planner
(``plan_batches``: sorted by length, or in the taken order when a request in the window has a
deadline); runs each through the one runner (``BatchRunner.run_batch``); and scatters the outputs
back to each request. So twenty small requests are not starved by one huge one, and rows of
different callers share batches. There is no artificial wait: a window forms as soon as the
worker is free.

With several workers, a worker that takes a window while rows are still waiting wakes the next
idle one, and a shallow queue is shared out: a window holds at most the untaken tokens divided by
the workers (at least one batch's budget), so one lone request's batches run on every worker side
by side instead of one window after another on one worker.

- Deadlines (``runner.Deadline``): a request with a deadline gives its rows in its own order;
  before each batch the worker asks each such request in it whether the batch may still start
  (``Deadline.allows``, with the batch's whole cost, queueing time included since ``now`` is
  read then). A request whose deadline refuses is finished at once: its leading rows that ran
  count as done, the rest do not run (``Reranker.rerank(deadline_ms=...)`` reports them as today).
- Cancellation: ``future.cancel()`` (or the cancelled asyncio task awaiting ``run_async``) drops
  the request's rows that have not run and frees their place in the queue.
- Bounded: at most ``max_queue_tokens`` real tokens wait in the queue. Past it, ``submit``
  raises ``OverloadedError`` at once, with ``retry_after_s`` (the measured time to drain the
  queue). A request is always admitted into an empty queue, whatever its size.

Outputs equal the unshared ones only if a row's output does not depend on its batch mates: fp32
cross-encoder scores are bit-identical whatever the batch; fp32 embeddings move by about one ulp
with the batch size; dynamic int8 moves within its fidelity bar.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import math
import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from crossrank.batching import ORDERS, batch_cost, plan_batches
from crossrank.errors import OverloadedError, UsageError, check_choice, check_int
from crossrank.runner import BatchRunner, Deadline
from crossrank.settings import DEFAULT_MAX_QUEUE_TOKENS, SCHEDULER_WINDOW_BATCHES, WORKERS_RANGE
from crossrank.tokenize import Rows

log = logging.getLogger("crossrank.scheduler")
SECONDS_PER_TOKEN_GUESS = 1e-4  # retry-after estimate before the first batch has been timed


@dataclass(frozen=True)
class BatchReport:
    """What the worker ran in one model call (passed to listeners, e.g. Prometheus metrics)."""

    model: str
    rows: int
    requests: int            # distinct requests with rows in the batch
    real_tokens: int
    computed_tokens: int     # rows x padded length
    seconds: float
    queued_tokens: int       # real tokens still waiting after the batch


class _Request:
    """One submission: its rows, the order they are taken in, and what has run."""

    __slots__ = ("rows", "lengths", "pending", "outputs", "done", "deadline", "future", "in_flight",
                 "queued_tokens", "finished", "serial")

    def __init__(self, rows: Rows, order: str, deadline: Deadline | None, serial: int):
        self.rows = rows
        self.lengths = rows.lengths
        # Without a deadline a request's own rows go longest first (the window is sorted anyway);
        # with one, in the caller's order, so that the rows done are the leading ones.
        taken = np.argsort(-self.lengths, kind="stable") if order == "length" else np.arange(len(self.lengths))
        self.pending: deque[int] = deque(taken.tolist())
        self.outputs: np.ndarray | None = None
        self.done = np.zeros(len(self.lengths), dtype=bool)
        self.deadline = deadline
        self.future: Future = Future()
        self.in_flight = 0              # rows taken into the current window, not yet run or dropped
        self.queued_tokens = int(self.lengths.sum())
        self.finished = False
        self.serial = serial

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.outputs is None:
            self.outputs = np.zeros((len(self.lengths),), dtype=np.float32)
        if self.deadline is not None:  # only the leading run of done rows counts (as in BatchRunner.run)
            first_gap = int(np.argmin(self.done)) if not self.done.all() else len(self.done)
            self.done[first_gap:] = False
        return self.outputs, self.done


class _Queue:
    """The state the worker and the callers share (the Scheduler facade is separate, so that
    dropping the last reference to it stops the worker)."""

    def __init__(self, runner: BatchRunner, pad_id: int, max_queue_tokens: int, window_batches: int, name: str,
                 workers: int):
        self.runner, self.pad_id, self.name, self.workers = runner, pad_id, name, workers
        self.max_queue_tokens = max_queue_tokens
        self.window_tokens = window_batches * runner.batch_tokens
        self.untaken_tokens = 0  # real tokens of the queued rows no window has taken yet
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.active: deque[_Request] = deque()  # requests with rows not yet taken, round-robin order
        self.queued_tokens = 0
        self.queued_requests = 0
        self.closed = False
        self.listeners: list[Callable[[BatchReport], None]] = []
        self.spent_seconds, self.spent_tokens = 0.0, 0
        self.serials = itertools.count()

    # -- callers' side --------------------------------------------------------------------------
    def submit(self, rows: Rows, order: str, deadline: Deadline | None) -> Future:
        request = _Request(rows, order, deadline, next(self.serials))
        if not request.pending:
            request.future.set_running_or_notify_cancel()
            request.future.set_result(request.result())
            return request.future
        with self.lock:
            if self.closed:
                raise UsageError(f"the {self.name} scheduler is closed; build a new model object")
            if self.queued_tokens and self.queued_tokens + request.queued_tokens > self.max_queue_tokens:
                raise OverloadedError(
                    f"{self.name} is overloaded: {self.queued_tokens} tokens are queued and this request adds "
                    f"{request.queued_tokens}, past max_queue_tokens {self.max_queue_tokens}; retry in "
                    f"{self.retry_after_s():.0f} s", retry_after_s=self.retry_after_s())
            self.queued_tokens += request.queued_tokens
            self.untaken_tokens += request.queued_tokens
            self.queued_requests += 1
            self.active.append(request)
            self.wake.notify()
        request.future.add_done_callback(lambda future: self._on_cancel(request) if future.cancelled() else None)
        return request.future

    def _on_cancel(self, request: _Request) -> None:
        with self.lock:
            self._drop(request)

    def retry_after_s(self) -> float:
        per_token = self.spent_seconds / self.spent_tokens if self.spent_tokens else SECONDS_PER_TOKEN_GUESS
        return float(max(1, math.ceil(self.queued_tokens * per_token)))

    # -- bookkeeping (under the lock) ------------------------------------------------------------
    def _drop(self, request: _Request) -> None:
        """Finish a request: its rows not yet run leave the queue (cancelled or past its deadline)."""
        if request.finished:
            return
        request.finished = True
        self.queued_tokens -= request.queued_tokens
        self.queued_requests -= 1
        request.queued_tokens = 0
        self.untaken_tokens -= int(request.lengths[list(request.pending)].sum()) if request.pending else 0
        request.pending.clear()
        try:
            self.active.remove(request)
        except ValueError:
            pass

    def _take_window(self) -> list[tuple[_Request, int]]:
        """Rows round-robin across the active requests, one per request per turn, until the window
        holds ``window_tokens`` real tokens, or its share of a shallow queue (the untaken tokens
        divided by the workers, at least one batch's budget); the next window goes on with the next
        request in turn."""
        share = max(self.runner.batch_tokens, math.ceil(self.untaken_tokens / self.workers))
        limit = min(self.window_tokens, share)
        window, tokens = [], 0
        while self.active and tokens < limit:
            request = self.active.popleft()
            row = request.pending.popleft()
            window.append((request, row))
            request.in_flight += 1
            tokens += int(request.lengths[row])
            if request.pending:
                self.active.append(request)
        self.untaken_tokens -= tokens
        return window

    # -- the worker (one thread) -----------------------------------------------------------------
    def work(self) -> None:
        while True:
            with self.lock:
                while not self.active and not self.closed:
                    self.wake.wait()
                if self.closed:
                    return
                window = self._take_window()
                if self.active:  # rows left: the next idle worker takes a window of them meanwhile
                    self.wake.notify()
            try:
                self._run_window(window)
            except BaseException as err:  # a failed model call fails the requests of its window
                failed = list({id(r): r for r, _ in window}.values())
                with self.lock:
                    for request in failed:
                        self._drop(request)
                for request in failed:
                    _resolve(request, err)

    def _run_window(self, window: list[tuple[_Request, int]]) -> None:
        owners = [request for request, _ in window]
        merged = Rows([r.rows.ids[i] for r, i in window], [r.rows.types[i] for r, i in window],
                      np.arange(len(window), dtype=np.int64))
        lengths = merged.lengths
        order = "input" if any(r.deadline is not None for r in owners) else "length"
        for batch in plan_batches(lengths, self.runner.batch_tokens, self.runner.max_rows, order=order):
            with self.lock:
                batch, refused = self._admit(batch, owners, lengths)
            for request in refused:
                _resolve(request)
            if len(batch) == 0:
                continue
            cost = batch_cost(lengths, batch)
            timed = {id(owners[p].deadline): owners[p].deadline for p in batch if owners[p].deadline is not None}
            clocks = {key: deadline.clock() for key, deadline in timed.items()}
            started = time.perf_counter()
            result = self.runner.run_batch(merged, batch, self.pad_id)
            seconds = time.perf_counter() - started
            for key, deadline in timed.items():
                deadline.spent(cost, deadline.clock() - clocks[key])
            for request in self._scatter(batch, window, lengths, result, seconds, cost):
                _resolve(request)

    def _admit(self, batch: np.ndarray, owners: list[_Request],
               lengths: np.ndarray) -> tuple[np.ndarray, list[_Request]]:
        """The batch's rows whose requests still want them (not cancelled, not finished), and the
        requests finished now because their deadline does not allow the batch's cost."""
        refused: list[_Request] = []
        for request in [r for r in self.active if r.deadline is not None and not r.deadline.allows(0)]:
            self._drop(request)  # its time ran out while it waited for a window
            refused.append(request)
        while True:
            keep = np.asarray([p for p in batch if not owners[p].finished], dtype=np.int64)
            cost = batch_cost(lengths, keep)
            late = {id(owners[p]): owners[p] for p in keep
                    if owners[p].deadline is not None and not owners[p].deadline.allows(cost)}
            if not late:
                return keep, refused
            for request in late.values():
                self._drop(request)
                refused.append(request)
            batch = keep

    def _scatter(self, batch: np.ndarray, window: list[tuple[_Request, int]], lengths: np.ndarray,
                 result: np.ndarray, seconds: float, cost: int) -> list[_Request]:
        """Outputs back to their requests; returns the requests now complete."""
        complete = []
        with self.lock:
            for position, output in zip(batch.tolist(), result):
                request, row = window[position]
                if request.outputs is None:
                    request.outputs = np.zeros((len(request.lengths),) + output.shape, dtype=np.float32)
                request.outputs[row] = output
                request.done[row] = True
                request.in_flight -= 1
                if request.finished:  # cancelled while its batch ran: already out of the queue
                    continue
                request.queued_tokens -= int(lengths[position])
                self.queued_tokens -= int(lengths[position])
                if not request.pending and request.in_flight == 0:
                    request.finished = True
                    self.queued_requests -= 1
                    complete.append(request)
            self.spent_seconds += seconds
            self.spent_tokens += cost
            report = BatchReport(self.name, len(batch), len({id(window[p][0]) for p in batch.tolist()}),
                                 int(lengths[batch].sum()), cost, seconds, self.queued_tokens)
        for listener in list(self.listeners):
            try:
                listener(report)
            except Exception:  # a listener (e.g. metrics) must not fail the requests
                log.exception("batch listener %r failed", listener)
        return complete

    def close(self) -> None:
        with self.lock:
            self.closed = True
            left = list(self.active)
            for request in left:
                self._drop(request)
            self.wake.notify_all()
        for request in left:
            _resolve(request, UsageError(f"the {self.name} scheduler was closed before this request ran"))


def _resolve(request: _Request, error: BaseException | None = None) -> None:
    """Complete a request's future (outside the lock: a future runs its callbacks at once)."""
    if request.future.done():  # cancelled by its caller, or already resolved
        return
    if request.future.set_running_or_notify_cancel():
        if error is None:
            request.future.set_result(request.result())
        else:
            request.future.set_exception(error)


class Scheduler:
    """One model's shared queue and worker thread(s); see the module docstring.

    runner: the model's BatchRunner (the workers are then the only callers of its session).
    pad_id: the tokenizer's padding id. max_queue_tokens: real tokens that may wait before
    ``submit`` raises OverloadedError. window_batches: batches' worth of tokens taken per turn
    (more: less padding, longer wait for a newcomer). workers: threads taking windows from the
    one queue and running them on the one session (default 1; with a 1-thread session, one per
    core runs batches side by side instead of splitting each batch across cores, which on small
    CPUs wastes less time synchronising: see benchmarks/serve_bench.py). name: for errors and metrics.
    """

    def __init__(self, runner: BatchRunner, pad_id: int, max_queue_tokens: int | None = None,
                 window_batches: int = SCHEDULER_WINDOW_BATCHES, name: str = "model", workers: int = 1):
        max_queue_tokens = check_int(max_queue_tokens, "max_queue_tokens", allow_none=True) or DEFAULT_MAX_QUEUE_TOKENS
        check_int(window_batches, "window_batches")
        self.workers = check_int(workers, "workers", *WORKERS_RANGE)
        self.runner, self.pad_id, self.name = runner, pad_id, name
        self._queue = _Queue(runner, pad_id, max_queue_tokens, window_batches, name, self.workers)
        for number in range(self.workers):
            threading.Thread(target=self._queue.work, name=f"crossrank-{name}-{number}", daemon=True).start()
        # dropping the last reference to the Scheduler (e.g. with its Reranker) stops the worker
        self._finalizer = weakref.finalize(self, self._queue.close)

    @property
    def max_queue_tokens(self) -> int:
        return self._queue.max_queue_tokens

    @property
    def queued_tokens(self) -> int:
        """Real tokens of the rows submitted and not yet run (cancelled ones excluded)."""
        return self._queue.queued_tokens

    @property
    def queued_requests(self) -> int:
        return self._queue.queued_requests

    def retry_after_s(self) -> float:
        """Estimated seconds until the queue drains, at the time per token measured so far (>= 1)."""
        with self._queue.lock:
            return self._queue.retry_after_s()

    def add_listener(self, listener: Callable[[BatchReport], None]) -> None:
        """Call ``listener(BatchReport)`` on the worker thread after every model call."""
        self._queue.listeners.append(listener)

    def submit(self, rows: Rows, order: str = "length", deadline: Deadline | None = None) -> Future:
        """Queue rows; the Future's result is ``(outputs, done)`` as ``BatchRunner.run`` returns.
        order: "length" (no deadline) or "input" (the caller's order; with a deadline).
        Raises OverloadedError at once when the queue is full."""
        check_choice(order, "order", ORDERS)
        future = self._queue.submit(rows, order, deadline)
        token = _CANCEL.get()
        if token is not None:
            token.watch(future)
        return future

    def run(self, rows: Rows, pad_id: int | None = None, order: str = "length",
            deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``BatchRunner.run`` through the shared queue: submit, then wait for the outputs."""
        if pad_id is not None and pad_id != self.pad_id:
            raise UsageError(f"pad_id {pad_id} is not this scheduler's ({self.pad_id})")
        return self.submit(rows, order, deadline).result()

    def close(self) -> None:
        """Stop the worker; requests still queued fail with UsageError. Idempotent."""
        self._finalizer()


# -- asyncio callers ------------------------------------------------------------------------------

class _CancelToken:
    """The futures submitted on behalf of one ``run_async`` call, cancelled together."""

    def __init__(self):
        self.lock = threading.Lock()
        self.futures: list[Future] = []
        self.cancelled = False

    def watch(self, future: Future) -> None:
        with self.lock:
            self.futures.append(future)
            cancelled = self.cancelled
        if cancelled:
            future.cancel()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            futures = list(self.futures)
        for future in futures:
            future.cancel()


_CANCEL: contextvars.ContextVar[_CancelToken | None] = contextvars.ContextVar("crossrank_cancel", default=None)


async def run_async(function: Callable, /, *args, **kwargs):
    """Await ``function(*args, **kwargs)`` run on a thread of its own (never on the event loop).

    Each call gets a new thread, so no executor queue forms in front of the scheduler's bounded
    one. If the awaiting task is cancelled, the rows it submitted to shared schedulers and not yet
    run are dropped (the thread then ends with CancelledError; a model call already running, or
    one on an unshared model, finishes first).
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    token = _CancelToken()
    context = contextvars.copy_context()
    context.run(_CANCEL.set, token)

    def deliver(outcome, error) -> None:
        if not done.cancelled():
            done.set_exception(error) if error is not None else done.set_result(outcome)

    def target() -> None:
        try:
            outcome, error = context.run(function, *args, **kwargs), None
        except CancelledError as err:
            outcome, error = None, asyncio.CancelledError(str(err))
        except BaseException as err:  # handed to the awaiting task
            outcome, error = None, err
        try:
            loop.call_soon_threadsafe(deliver, outcome, error)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    threading.Thread(target=target, name=f"crossrank-call-{getattr(function, '__name__', 'call')}",
                     daemon=True).start()
    try:
        return await done
    except asyncio.CancelledError:
        token.cancel()
        raise


__all__ = ["BatchReport", "Scheduler", "run_async"]
