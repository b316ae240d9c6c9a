"""Runs token rows through an ONNX session in length-sorted, token-budget batches."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from crossrank.batching import DEFAULT_BATCH_TOKENS, MAX_ROWS, assemble_batch, padding_fraction, plan_batches
from crossrank.session import build_session
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


class BatchRunner:
    """One ONNX session plus the batch planner; ``run(rows)`` returns outputs in row order."""

    def __init__(self, model_path, device: str = "cpu", threads: int | None = None,
                 batch_tokens: int | None = None, io_binding: bool | None = None,
                 memory_arena: bool = False, max_rows: int = MAX_ROWS):
        self.session = build_session(model_path, device=device, threads=threads, memory_arena=memory_arena)
        self.device = device
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS[device]
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        self.max_rows = max_rows
        self.io_binding = device == "cuda" if io_binding is None else io_binding
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        self.stats = RunStats()

    def _run_batch(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self.io_binding:
            return self.session.run([self.output_name], feeds)[0]
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self.output_name, "cuda" if self.device == "cuda" else "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run(self, rows: Rows, pad_id: int, should_continue: Callable[[int], bool] | None = None,
            order: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Outputs for every row (row order) and a bool mask of the rows that were run.

        ``order``: batches to run (default: length-sorted token-budget plan). ``should_continue``:
        called with the next batch's row count before each batch; False stops early.
        """
        lengths = rows.lengths
        batches = order if order is not None else plan_batches(lengths, self.batch_tokens, self.max_rows)
        outputs: np.ndarray | None = None
        done = np.zeros(len(lengths), dtype=bool)
        for rows_in_batch in batches:
            if should_continue is not None and not should_continue(len(rows_in_batch)):
                break
            batch = assemble_batch(rows_in_batch, rows.ids, rows.types, pad_id)
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                     "token_type_ids": batch.token_type_ids}
            result = self._run_batch({k: v for k, v in feeds.items() if k in self.input_names})
            if outputs is None:
                outputs = np.zeros((len(lengths),) + result.shape[1:], dtype=np.float32)
            outputs[rows_in_batch] = result
            done[rows_in_batch] = True
        with self.stats.lock:
            ran = [b for b in batches if done[b].all()]
            self.stats.batches += len(ran)
            self.stats.rows += int(done.sum())
            self.stats.real_tokens += int(lengths[done].sum())
            self.stats.computed_tokens += sum(len(b) * int(lengths[b].max()) for b in ran)
        if outputs is None:
            outputs = np.zeros((len(lengths),), dtype=np.float32)
        return outputs, done


__all__ = ["BatchRunner", "RunStats", "padding_fraction"]
