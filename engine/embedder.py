"""Embedder: L2-normalised sentence embeddings from an exported bi-encoder."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from crossrank.errors import check_bool, check_int, check_texts, check_token_budget
from crossrank.model import Model, session_options
from crossrank.runner import CoreBudget
from crossrank.scheduler import run_async
from crossrank.settings import SessionOptions
from crossrank.tokenize import TextTokenizer

CHUNK_TEXTS = 4096  # texts tokenized and run per step: bounds memory for huge inputs


class Embeddings(NamedTuple):
    """What ``embed_with_usage`` returns: the vectors (float32 [n, dim], L2-normalised, input
    order), ``tokens``, the real tokens (special tokens included) of the rows that ran, and how
    many texts were cut to the window (``truncated``) by how many tokens (``dropped_tokens``)."""

    vectors: np.ndarray
    tokens: int
    truncated: int = 0
    dropped_tokens: int = 0


class Embedder(Model):
    """A bi-encoder artifact on ONNX Runtime or OpenVINO; ``embed(texts)`` -> float32 [n, dim], input order.

    Options as for ``Reranker`` (threads, batch_tokens, io_binding, memory_arena, backend,
    precision, allow_low_fidelity, or a ``SessionOptions``; ``max_length``). shared: concurrent callers' texts share batches through
    one queue (``crossrank.scheduler``), at most ``max_queue_tokens`` tokens queued (beyond:
    OverloadedError), ``workers`` threads running its batches. core_budget: a ``CoreBudget`` shared
    with other models (model calls take turns on the cores). ``aembed`` is the asyncio variant
    (the model never runs on the event loop).
    """

    kind = "bi"
    min_length = 4

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None,
                 io_binding: bool | None = None, memory_arena: bool | None = None, shared: bool = False,
                 max_queue_tokens: int | None = None, workers: int = 1, *, options: SessionOptions | None = None,
                 backend: str | None = None, precision: str | None = None,
                 allow_low_fidelity: bool | None = None, core_budget: CoreBudget | None = None):
        options = session_options(options, threads=threads, batch_tokens=batch_tokens, io_binding=io_binding,
                                  memory_arena=memory_arena, backend=backend, precision=precision,
                                  allow_low_fidelity=allow_low_fidelity)
        super().__init__(path, device, max_length, options, shared, max_queue_tokens, workers, core_budget)
        self.dim = int(self.artifact.manifest["dim"])

    def _load_tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.artifact.tokenizer_path, self.max_length)

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Real tokens (special tokens included) of each text as ``embed`` runs it (truncated)."""
        return self.tokenizer.rows(check_texts(texts, "texts")).lengths

    def embed_with_usage(self, texts: Sequence[str], progress: bool = False,
                         token_budget: int | None = None) -> Embeddings:
        """``embed``'s vectors, the real tokens that ran and the truncation counts (one
        tokenization). token_budget: refuse (TokenBudgetError) texts holding more real tokens,
        before they run (checked per step of CHUNK_TEXTS texts, so what runs never exceeds it)."""
        texts = check_texts(texts, "texts")
        check_bool(progress, "progress")
        token_budget = check_int(token_budget, "token_budget", allow_none=True)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = truncated = dropped_tokens = 0
        bar = None
        if progress:
            from crossrank.progress import progress_bar

            bar = progress_bar(total=len(texts), unit="doc", desc="embedding")
        for start in range(0, len(texts), CHUNK_TEXTS):
            part = texts[start: start + CHUNK_TEXTS]
            rows, dropped = self.tokenizer.rows_and_dropped(part)
            tokens += int(rows.lengths.sum())
            check_token_budget(tokens, token_budget, f"these {len(texts)} texts")
            truncated += int((dropped > 0).sum())
            dropped_tokens += int(dropped.sum())
            out[start: start + len(part)], _ = self._run(rows)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return Embeddings(out, tokens, truncated, dropped_tokens)

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """L2-normalised float32 [len(texts), dim] in input order. progress: a tqdm bar."""
        return self.embed_with_usage(texts, progress).vectors

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` for asyncio callers (on a thread of its own; cancelling drops queued texts)."""
        return await run_async(self.embed, texts)


__all__ = ["Embedder", "Embeddings"]
