"""The public face of a model: what Reranker and Embedder share, and all that code outside the
core may use of them.

A model is an artifact folder (manifest checked on load) run on a backend (ONNX Runtime, or
OpenVINO on CPU) at a precision: a tokenizer, the session options it runs with
(``SessionOptions``, each value with its origin; backend and precision by default from the CPU's
ISA, crossrank.isa; a precision the export did not measure only with a passing fidelity
certificate, crossrank.certificate), and an executor
(``crossrank.runner.Executor``) that runs its token rows: a ``BatchRunner`` on the caller's thread
or, with ``shared=True``, a ``Scheduler`` whose worker threads merge concurrent callers' rows.

The face: ``options``, ``describe()`` (manifest summary, options with origins, sharing),
``token_lengths(...)`` (the real tokens of each row the model would run), ``stats()`` /
``reset_stats()`` / ``padding_fraction``, the shared queue's depth and batch listeners,
``end_profiling()`` and ``close()``. The session, executor and tokenizer stay the core's
business (tests/test_architecture.py checks that nothing outside the core reads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from crossrank.artifact import check_graph, load_artifact
from crossrank.certificate import artifact_runtime, check_precision
from crossrank.errors import ArgumentTypeError, InvalidArgumentError, UsageError, check_bool, check_int
from crossrank.isa import cpu_flags, describe_cpu
from crossrank.runner import BatchRunner, CoreBudget, Deadline, Executor, RunTotals
from crossrank.scheduler import BatchReport, Scheduler
from crossrank.settings import SessionOptions
from crossrank.tokenize import Rows


def session_options(options: SessionOptions | None, **given) -> SessionOptions:
    """``options`` (a SessionOptions or None) with the constructor's keyword options merged in."""
    if options is not None and not isinstance(options, SessionOptions):
        raise ArgumentTypeError(f"options must be a crossrank.SessionOptions, got {type(options).__name__}")
    return (options or SessionOptions()).merged(**given)


class Model:
    """The base of Reranker and Embedder (see the module docstring).

    path: artifact folder. device: "cpu" or "cuda". max_length: token window, at most the
    manifest's (default: the manifest's). options: ``SessionOptions`` (resolved here against the
    folder's runtime.json and the defaults). shared: run every call through one queue whose
    ``workers`` threads merge concurrent callers' rows into shared batches, with at most
    ``max_queue_tokens`` tokens queued (beyond: OverloadedError). core_budget: a ``CoreBudget``
    shared with other models, each model call taking one of its slots (None: calls run at once).
    """

    kind: ClassVar[str]          # the artifact kind this model runs: "cross" or "bi"
    min_length: ClassVar[int]    # the smallest max_length that leaves room for text

    def __init__(self, path: str | Path, device: str, max_length: int | None, options: SessionOptions,
                 shared: bool, max_queue_tokens: int | None, workers: int, core_budget: CoreBudget | None = None):
        resolved = options.resolve(path, device)
        if not check_bool(shared, "shared") and (max_queue_tokens is not None or workers != 1):
            raise InvalidArgumentError("max_queue_tokens and workers configure the shared queue: pass them with "
                                       "shared=True")
        self.artifact = load_artifact(path, expect_kind=self.kind)
        flags = cpu_flags()
        self.options: SessionOptions = self._runtime_options(resolved, device, flags)
        self.fidelity = check_precision(self.artifact, self.options.backend, self.options.precision, device, flags,
                                        allow_low_fidelity=self.options.allow_low_fidelity, shared=shared)
        limit = self.artifact.max_length
        self.max_length: int = check_int(max_length, "max_length", self.min_length, limit, allow_none=True) or limit
        self.tokenizer = self._load_tokenizer()
        self.runner = BatchRunner(self.artifact.model_path, device, self.options, core_budget=core_budget)
        check_graph(self.artifact, self.runner.session)
        name = {"cross": "reranker", "bi": "embedder"}[self.kind]
        self.scheduler = Scheduler(self.runner, self.tokenizer.pad_id, max_queue_tokens, name=name,
                                   workers=workers) if shared else None
        self.executor: Executor = self.runner if self.scheduler is None else self.scheduler
        self.device = device

    def _runtime_options(self, options: SessionOptions, device: str, flags: frozenset[str]) -> SessionOptions:
        """Backend and precision where neither was chosen: crossrank.isa's rule for this artifact
        on this CPU (``runtime_reason`` says why); where one was chosen, the other follows it."""
        origin, artifact = options.origin, self.artifact
        if origin["backend"] == "default" and origin["precision"] == "default":
            choice = artifact_runtime(artifact, device, flags)
            self.runtime_reason = f"default rule: {choice.reason}"
            return options.with_defaults(backend=choice.backend, precision=choice.precision)
        self.runtime_reason = "chosen (argument or runtime.json)"
        precision = options.precision or artifact.precision
        return options.with_defaults(precision=precision, backend="openvino" if precision == "bf16" else "onnxruntime")

    def _load_tokenizer(self):
        raise NotImplementedError

    def _run(self, rows: Rows, deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Outputs of the rows (row order) and the mask of those run, through the executor."""
        return self.executor.run(rows, self.tokenizer.pad_id, order="length" if deadline is None else "input",
                                 deadline=deadline)

    # -- what it is ---------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The artifact folder."""
        return self.artifact.path

    @property
    def precision(self) -> str:
        """The precision the model computes in (the artifact's, or bf16)."""
        return self.options.precision

    @property
    def backend(self) -> str:
        """"onnxruntime" or "openvino"."""
        return self.options.backend

    @property
    def shared(self) -> bool:
        """Whether calls go through the shared queue (``shared=True``)."""
        return self.scheduler is not None

    def describe(self) -> dict[str, Any]:
        """What this model is and how it runs, as plain JSON-ready values: ``kind``, ``path``,
        ``device``, ``max_length`` (the window it runs with), ``manifest`` (``Artifact.summary()``),
        ``options`` (every session option's value), ``origin`` (where each came from: "argument",
        "runtime.json" or "default"), ``runtime`` (``backend``, ``precision``, ``computes_in``:
        what OpenVINO reports it computes in, e.g. "f32" or "bf16", ``reason`` for them, ``cpu``:
        model and ISA flags, ``fidelity``: where the precision's figures come from,
        see crossrank.certificate.check_precision) and ``sharing`` (``shared``,
        ``max_queue_tokens`` and ``workers``, None when not shared; ``core_budget_slots``, None
        without a CoreBudget)."""
        budget = self.runner.core_budget
        return {"kind": self.kind, "path": str(self.path), "device": self.device, "max_length": self.max_length,
                "manifest": self.artifact.summary(), "options": self.options.values(),
                "origin": dict(self.options.origin),
                "runtime": {"backend": self.options.backend, "precision": self.options.precision,
                            "computes_in": getattr(self.runner.session, "inference_precision", self.options.precision),
                            "reason": self.runtime_reason, "cpu": describe_cpu(), "fidelity": self.fidelity},
                "sharing": {"shared": self.shared,
                            "max_queue_tokens": self.scheduler.max_queue_tokens if self.shared else None,
                            "workers": self.scheduler.workers if self.shared else None,
                            "core_budget_slots": budget.slots if budget is not None else None}}

    def token_lengths(self, *items) -> np.ndarray:
        """Real tokens (special tokens included) of each row the model would run for ``items``."""
        raise NotImplementedError

    # -- what it did --------------------------------------------------------------------------------
    def stats(self) -> RunTotals:
        """Totals since the model was built (or ``reset_stats``): model calls, rows, real and
        computed tokens; shared or not, every call counts."""
        return self.runner.stats.snapshot()

    def reset_stats(self) -> None:
        self.runner.stats.reset()

    @property
    def padding_fraction(self) -> float:
        """Share of computed tokens that were padding, over the totals of ``stats()``."""
        return self.stats().padding_fraction

    @property
    def queued_tokens(self) -> int:
        """Real tokens waiting in the shared queue (0 when not shared)."""
        return self.scheduler.queued_tokens if self.shared else 0

    @property
    def queued_requests(self) -> int:
        """Calls waiting in the shared queue (0 when not shared)."""
        return self.scheduler.queued_requests if self.shared else 0

    def add_batch_listener(self, listener: Callable[[BatchReport], None]) -> None:
        """Call ``listener(BatchReport)`` after every shared batch (on a worker thread)."""
        if not self.shared:
            raise UsageError("batch listeners watch the shared queue: build the model with shared=True")
        self.scheduler.add_listener(listener)

    def end_profiling(self) -> Path:
        """Stop ONNX Runtime's profiler (options.profile_prefix) and return the profile's file."""
        if self.options.profile_prefix is None:
            raise UsageError("this model was built without profiling: pass SessionOptions(profile_prefix=...)")
        return Path(self.runner.session.end_profiling())

    def close(self) -> None:
        """Stop the shared worker threads, if any (calls still queued fail with UsageError)."""
        self.executor.close()


__all__ = ["Model", "session_options"]
