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
                          threads: int | None = None, backend: str = "torch", file_name: str | None = None,
                          dtype: str = "fp32") -> Peer:
    """sentence-transformers' CrossEncoder (kind "cross") or SentenceTransformer ("bi") on the
    Hugging Face folder ``source``. backend: "torch" (``dtype`` "fp32" or "bf16": ``model_kwargs=
    {"torch_dtype": torch.bfloat16}``), or "onnx" with ``file_name`` (a graph of the folder's
    ``onnx/``, e.g. its own dynamic int8 exports) on ``threads`` intra-op threads."""
    kwargs: dict[str, Any] = {}
    if backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        kwargs["device"] = "cuda" if device == "cuda" else "cpu"
        if dtype == "bf16":
            kwargs["model_kwargs"] = {"torch_dtype": torch.bfloat16}
        system = f"torch {dtype}, batch {ST_BATCH}"
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


def openvino_on_onnx_export(folder: str | Path, max_length: int, threads: int) -> Peer:
    """What sentence-transformers' ``backend="openvino"`` runs, without optimum-intel (which does
    not install beside this project's optimum): the ``openvino`` runtime compiling the cross-encoder
    folder's own ONNX export (``onnx/model.onnx``) at OpenVINO's default precision for this CPU
    (bf16 where it has AMX / AVX-512 BF16), its tokenizer, batches of 32, sigmoid as CrossEncoder.
    ``system`` says the precision OpenVINO chose."""
    import openvino as ov
    from transformers import AutoTokenizer

    folder = Path(folder)
    compiled = ov.Core().compile_model(str(folder / "onnx" / "model.onnx"), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    inputs = {port.get_any_name() for port in compiled.inputs}
    request = compiled.create_infer_request()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def score(pairs: list) -> np.ndarray:
        logits = []
        for start in range(0, len(pairs), ST_BATCH):
            part = pairs[start:start + ST_BATCH]
            feeds = tokenizer([q for q, _ in part], [d for _, d in part], padding=True, truncation=True,
                              max_length=max_length, return_tensors="np")
            request.infer({k: v.astype(np.int64) for k, v in feeds.items() if k in inputs})
            logits.append(request.get_output_tensor(0).data[:, 0].copy())
        return 1.0 / (1.0 + np.exp(-np.concatenate(logits).astype(np.float64)))

    def rank(query: str, documents: list[str]) -> list[dict]:
        scores = score([(query, d) for d in documents])
        return [{"corpus_id": int(i), "score": float(scores[i])} for i in np.argsort(-scores)]

    return Peer(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), score, rank)  # e.g. "f32", "bf16"


__all__ = ["Peer", "ST_BATCH", "openvino_on_onnx_export", "sentence_transformers"]
