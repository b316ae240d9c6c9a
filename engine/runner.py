"""Runs token rows through an ONNX session in token-budget batches (the one scoring path).

``BatchRunner.run(rows, pad_id, order=..., deadline=...)`` plans the batches (length-sorted for
throughput, input order when a deadline may cut the work short), runs them, and returns outputs in
row order with a mask of the rows that ran. A deadline is only a stop condition on that path.

``Executor`` is the protocol a model runs its rows through: ``BatchRunner`` (on the caller's
thread) and ``crossrank.scheduler.Scheduler`` (a shared queue, worker threads) both implement it.

``CoreBudget``: models that share the machine's cores through one budget (at most ``slots`` model
calls at once across all of them, in the order they asked) instead of each running whenever its
callers come and leaving the sharing to the operating system.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from crossrank.batching import assemble_batch, batch_cost, plan_batches
from crossrank.errors import ArgumentTypeError, check_int
from crossrank.session import build_session
from crossrank.settings import MAX_ROWS, SessionOptions
from crossrank.tokenize import Rows


@dataclass
class RunStats:
    """Totals since the runner was built (guarded by a lock: runners are shared across threads)."""

    batches: int = 0
    rows: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.computed_tokens if self.computed_tokens else 0.0

    def add(self, rows: int, real_tokens: int, computed_tokens: int) -> None:
        with self.lock:
            self.batches += 1
            self.rows += rows
            self.real_tokens += real_tokens
            self.computed_tokens += computed_tokens

    def snapshot(self) -> "RunTotals":
        with self.lock:
            return RunTotals(self.batches, self.rows, self.real_tokens, self.computed_tokens)

    def reset(self) -> None:
        with self.lock:
            self.batches = self.rows = self.real_tokens = self.computed_tokens = 0


@dataclass(frozen=True)
class RunTotals:
    """A model's totals at one moment (``Model.stats()``): model calls, rows (pairs or texts) run,
    real tokens and computed tokens (rows x padded length)."""

    batches: int = 0
    rows: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0

    @property
    def padding_fraction(self) -> float:
        """Share of the computed tokens that were padding (0 = none wasted)."""
        return 1.0 - self.real_tokens / self.computed_tokens if self.computed_tokens else 0.0


class Deadline:
    """A stop condition for ``BatchRunner.run``: the next batch starts only if, at the time per
    computed token measured so far (before the first batch: ``seconds_per_token``, e.g. measured by
    an earlier call), it ends by ``at`` (a ``clock()`` reading, seconds). With no measurement yet
    a batch starts if time is left."""

    def __init__(self, at: float, clock: Callable[[], float] = time.perf_counter,
                 seconds_per_token: float | None = None):
        self.at, self.clock, self.seconds_per_token = at, clock, seconds_per_token
        self.spent_seconds, self.spent_tokens = 0.0, 0

    def allows(self, cost_tokens: int) -> bool:
        now = self.clock()
        estimate = 0.0 if self.seconds_per_token is None else self.seconds_per_token * cost_tokens
        return now < self.at and now + estimate <= self.at

    def spent(self, cost_tokens: int, seconds: float) -> None:
        self.spent_seconds += seconds
        self.spent_tokens += cost_tokens
        self.seconds_per_token = self.spent_seconds / self.spent_tokens


class CoreBudget:
    """One budget of model calls for several models: at most ``slots`` calls run at once across
    every model built with it (``Reranker(..., core_budget=budget)``), each started in the order
    it asked (first come, first served: no model starves another). One slot suits models whose
    sessions each use all cores (the default threads); ``slots = cores`` suits one-thread sessions.
    ``waited_seconds`` totals the time calls spent waiting for a slot."""

    def __init__(self, slots: int = 1):
        self.slots = check_int(slots, "slots", 1, 1024)
        self._free = self.slots
        self._waiting: deque[object] = deque()
        self._turn = threading.Condition(threading.Lock())
        self.waited_seconds = 0.0

    def __enter__(self) -> "CoreBudget":
        ticket, asked = object(), time.perf_counter()
        with self._turn:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or not self._free:
                self._turn.wait()
            self._waiting.popleft()
            self._free -= 1
            self.waited_seconds += time.perf_counter() - asked
            self._turn.notify_all()  # the next in line may take another free slot
        return self

    def __exit__(self, *exc) -> None:
        with self._turn:
            self._free += 1
            self._turn.notify_all()


@runtime_checkable
class Executor(Protocol):
    """What a model runs its token rows through (``Reranker`` and ``Embedder`` call nothing else):
    ``BatchRunner`` on the caller's thread, or ``crossrank.scheduler.Scheduler``, whose worker
    threads merge concurrent callers' rows into shared batches.

    ``run`` returns the outputs for every row in row order (zeros where not run) and a bool mask of
    the rows run. order: "length" (sorted, least padding) or "input" (the rows' order: with a
    deadline, the first rows are the ones run). deadline: stop before a batch that would overrun it.
    ``close`` stops what the executor runs on (worker threads); calls made after it fail.
    """

    def run(self, rows: Rows, pad_id: int, order: str = "length",
            deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class BatchRunner:
    """One model session (ONNX Runtime or OpenVINO) plus the batch planner; ``run(rows)`` returns
    outputs in row order.

    options: the model's ``SessionOptions`` (resolved for ``device`` here when they are not yet).
    core_budget: a ``CoreBudget`` every model call takes a slot of (None: calls run at once).
    """

    def __init__(self, model_path, device: str, options: SessionOptions | None = None, max_rows: int = MAX_ROWS,
                 core_budget: CoreBudget | None = None):
        if core_budget is not None and not isinstance(core_budget, CoreBudget):
            raise ArgumentTypeError(f"core_budget must be a crossrank.CoreBudget, got {type(core_budget).__name__}")
        self.core_budget = core_budget
        options = SessionOptions() if options is None else options
        if not isinstance(options, SessionOptions):
            raise ArgumentTypeError(f"options must be a crossrank.SessionOptions, got {type(options).__name__}")
        self.options = options if options.resolved else options.resolve(None, device)
        o = self.options
        self.session = build_session(model_path, device=device, threads=o.threads, memory_arena=o.memory_arena,
                                     optimization=o.optimization, profile_prefix=o.profile_prefix,
                                     spinning=o.spinning, backend=o.backend, precision=o.precision)
        self.device = device
        self.batch_tokens = o.batch_tokens
        self.max_rows = max_rows
        self.io_binding = o.io_binding and o.backend == "onnxruntime"  # OpenVINO reads host arrays
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        self.stats = RunStats()

    def _run_batch(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self.io_binding:
            return self.session.run([self.output_name], feeds)[0]
        # Inputs are copied to the device once, as OrtValues the session reads in place; the
        # output (one score or vector per row) is written by the session straight into host memory.
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, self.device, 0))
        binding.bind_output(self.output_name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def run(self, rows: Rows, pad_id: int, order: str = "length",
            deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Outputs for every row (row order; zeros where not run) and a bool mask of the rows run.

        order: "length" (sorted, least padding) or "input" (the rows' order: with a deadline, the
        first rows are the ones scored). deadline: stop before a batch that would overrun it.
        """
        lengths = rows.lengths
        batches = plan_batches(lengths, self.batch_tokens, self.max_rows, order=order)
        outputs: np.ndarray | None = None
        done = np.zeros(len(lengths), dtype=bool)
        for rows_in_batch in batches:
            cost = batch_cost(lengths, rows_in_batch)
            if deadline is not None and not deadline.allows(cost):
                break
            started = deadline.clock() if deadline is not None else 0.0
            result = self.run_batch(rows, rows_in_batch, pad_id)
            if deadline is not None:
                deadline.spent(cost, deadline.clock() - started)
            if outputs is None:
                outputs = np.zeros((len(lengths),) + result.shape[1:], dtype=np.float32)
            outputs[rows_in_batch] = result
            done[rows_in_batch] = True
        if outputs is None:
            outputs = np.zeros((len(lengths),), dtype=np.float32)
        return outputs, done

    def run_batch(self, rows: Rows, rows_in_batch: np.ndarray, pad_id: int) -> np.ndarray:
        """One model call on the rows at positions ``rows_in_batch`` (padded to the longest);
        returns their outputs in that order. ``run`` and the shared scheduler both call it."""
        batch = assemble_batch(rows_in_batch, rows.ids, rows.types, pad_id)
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                 "token_type_ids": batch.token_type_ids}
        with self.core_budget or nullcontext():
            result = self._run_batch({k: v for k, v in feeds.items() if k in self.input_names})
        self.stats.add(len(rows_in_batch), int(sum(len(rows.ids[r]) for r in rows_in_batch)), batch.input_ids.size)
        return result

    def close(self) -> None:
        """Nothing to stop: the calls run on their callers' threads (the session goes with the runner)."""


__all__ = ["BatchRunner", "CoreBudget", "Deadline", "Executor", "RunStats", "RunTotals"]
