"""Embedder: L2-normalised sentence embeddings from an exported bi-encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from crossrank.artifact import load_artifact
from crossrank.reranker import check_documents
from crossrank.runner import BatchRunner
from crossrank.tokenize import TextTokenizer

CHUNK_TEXTS = 4096  # texts tokenized and run per step: bounds memory for huge inputs


class Embedder:
    """A bi-encoder artifact on ONNX Runtime; ``embed(texts)`` -> float32 [n, dim], input order."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None,
                 io_binding: bool | None = None, memory_arena: bool = False):
        self.artifact = load_artifact(path, expect_kind="bi")
        limit = self.artifact.max_length
        if max_length is not None and not 4 <= max_length <= limit:
            raise ValueError(f"max_length {max_length} must be between 4 and the artifact's {limit}")
        self.max_length = max_length or limit
        self.dim = int(self.artifact.manifest["dim"])
        self.tokenizer = TextTokenizer(self.artifact.tokenizer_path, self.max_length)
        self.runner = BatchRunner(self.artifact.model_path, device=device, threads=threads,
                                  batch_tokens=batch_tokens, io_binding=io_binding, memory_arena=memory_arena)
        self.device = device

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        texts = check_documents(texts, "texts")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="doc", desc="embedding")
        for start in range(0, len(texts), CHUNK_TEXTS):
            part = texts[start: start + CHUNK_TEXTS]
            rows = self.tokenizer.rows(part)
            out[start: start + len(part)], _ = self.runner.run(rows, self.tokenizer.pad_id)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return out

    @property
    def padding_fraction(self) -> float:
        return self.runner.stats.padding_fraction
