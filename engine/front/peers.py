"""The sentence-transformers side of every comparison (``crossrank bench --vs``,
benchmarks/rerank_bench.py): the same weights loaded the way its users load them and called the
way they call them, batch 32. torch and sentence-transformers are imported only here, when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ST_BATCH = 32  # sentence-transformers' default batch size


@dataclass
class Peer:
    """A peer system: ``score(items)`` for (query, document) pairs (cross) or texts (bi), all in one
    call, results in input order; ``request(query, documents)`` for one request."""

    system: str
    score: Callable[[list], np.ndarray]
    request: Callable[[str, list[str]], Any]


def sentence_transformers(source: str | Path, kind: str, max_length: int, device: str = "cpu",
                          threads: int | None = None, backend: str = "torch", file_name: str | None = None) -> Peer:
    """sentence-transformers' CrossEncoder (kind "cross") or SentenceTransformer ("bi") on the
    Hugging Face folder ``source``. backend: "torch" (fp32), or "onnx" with ``file_name`` (a graph
    of the folder's ``onnx/``, e.g. its own dynamic int8 exports) on ``threads`` intra-op threads."""
    kwargs: dict[str, Any] = {}
    if backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        kwargs["device"] = "cuda" if device == "cuda" else "cpu"
        system = f"torch fp32, batch {ST_BATCH}"
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        kwargs.update(backend=backend, model_kwargs={"file_name": file_name, "session_options": options})
        system = f"{backend} {file_name}, batch {ST_BATCH}"
    if kind == "cross":
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(source), max_length=max_length, **kwargs)
        return Peer(f"sentence-transformers CrossEncoder, {system}",
                    lambda pairs: np.asarray(model.predict(pairs, batch_size=ST_BATCH, show_progress_bar=False)),
                    lambda query, documents: model.rank(query, documents))
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source), **kwargs)
    model.max_seq_length = max_length

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=ST_BATCH, normalize_embeddings=True, show_progress_bar=False)

    return Peer(f"sentence-transformers SentenceTransformer, {system}", embed, lambda query, documents: embed(documents))


__all__ = ["Peer", "ST_BATCH", "sentence_transformers"]
