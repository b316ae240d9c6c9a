"""Transformer fusions, applied once at export time.

onnxruntime's transformer optimizer rewrites the exported encoder into fused operators
(EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu) so sessions start without
re-discovering them and run fewer, larger kernels.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from crossrank.errors import UnsupportedModelError

# Model families that onnxruntime's optimizer handles with its "bert" fusion rules.
FUSION_MODEL_TYPE = {"bert": "bert", "xlm-roberta": "bert", "roberta": "bert", "distilbert": "bert"}


def fuse_transformer(onnx_path: str | Path, model_type: str, num_heads: int, hidden_size: int,
                     for_gpu: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Fuse the encoder at ``onnx_path``; returns the fused model and the count of each fused op."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    family = FUSION_MODEL_TYPE.get(model_type)
    if family is None:
        raise UnsupportedModelError(f"no fusion rules for model type {model_type!r}; known: "
                                    f"{sorted(FUSION_MODEL_TYPE)}")
    options = FusionOptions(family)
    optimized = optimize_model(
        str(onnx_path), model_type=family, num_heads=num_heads, hidden_size=hidden_size,
        opt_level=0, use_gpu=for_gpu, optimization_options=options,
    )
    if not any(op.domain == "com.microsoft" for op in optimized.model.opset_import):
        optimized.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    stats = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    return optimized.model, stats


def convert_to_fp16(model: onnx.ModelProto, keep_fp32_nodes: list[str]) -> onnx.ModelProto:
    """fp16 weights and activations for the CUDA provider; graph inputs/outputs stay as they are
    (int64 ids in, float32 out) and the listed nodes (the heads) stay fp32."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(keep_io_types=True, node_block_list=keep_fp32_nodes)
    wrapped.topological_sort()
    return wrapped.model
