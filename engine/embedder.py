"""Embedder: L2-normalised sentence embeddings from an exported bi-encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from crossrank.artifact import check_graph, load_artifact
from crossrank.errors import InvalidArgumentError, check_bool, check_int, check_texts
from crossrank.runner import BatchRunner
from crossrank.scheduler import Scheduler, run_async
from crossrank.settings import MEMORY_ARENA, resolve_settings
from crossrank.tokenize import TextTokenizer

CHUNK_TEXTS = 4096  # texts tokenized and run per step: bounds memory for huge inputs


class Embedder:
    """A bi-encoder artifact on ONNX Runtime; ``embed(texts)`` -> float32 [n, dim], input order.

    shared: concurrent callers' texts share batches through one worker thread
    (``crossrank.scheduler``), at most ``max_queue_tokens`` tokens queued (beyond: OverloadedError),
    ``workers`` threads running its batches.
    ``aembed`` is the asyncio variant (the model never runs on the event loop).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None,
                 io_binding: bool | None = None, memory_arena: bool = MEMORY_ARENA, shared: bool = False,
                 max_queue_tokens: int | None = None, workers: int = 1):
        settings, self.settings_origin = resolve_settings(path, device, threads, batch_tokens, io_binding)
        if not check_bool(shared, "shared") and (max_queue_tokens is not None or workers != 1):
            raise InvalidArgumentError("max_queue_tokens and workers configure the shared queue: pass them with "
                                       "shared=True")
        self.artifact = load_artifact(path, expect_kind="bi")
        limit = self.artifact.max_length
        self.max_length = check_int(max_length, "max_length", 4, limit, allow_none=True) or limit
        self.dim = int(self.artifact.manifest["dim"])
        self.tokenizer = TextTokenizer(self.artifact.tokenizer_path, self.max_length)
        self.runner = BatchRunner(self.artifact.model_path, settings, memory_arena=memory_arena)
        check_graph(self.artifact, self.runner.session)
        self.scheduler = Scheduler(self.runner, self.tokenizer.pad_id, max_queue_tokens, name="embedder",
                                   workers=workers) if shared else None
        self.device = device

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """L2-normalised float32 [len(texts), dim] in input order. progress: a tqdm bar."""
        texts = check_texts(texts, "texts")
        check_bool(progress, "progress")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = None
        runner = self.runner if self.scheduler is None else self.scheduler
        if progress:
            from crossrank.progress import progress_bar

            bar = progress_bar(total=len(texts), unit="doc", desc="embedding")
        for start in range(0, len(texts), CHUNK_TEXTS):
            part = texts[start: start + CHUNK_TEXTS]
            rows = self.tokenizer.rows(part)
            out[start: start + len(part)], _ = runner.run(rows, self.tokenizer.pad_id)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return out

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` for asyncio callers (on a thread of its own; cancelling drops queued texts)."""
        return await run_async(self.embed, texts)

    def close(self) -> None:
        """Stop the shared worker thread, if any."""
        if self.scheduler is not None:
            self.scheduler.close()

    @property
    def padding_fraction(self) -> float:
        return self.runner.stats.padding_fraction
