"""Transformer fusions, applied once at export time.

onnxruntime's transformer optimizer rewrites the exported graph into fused operators (for BERT:
EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu; for Qwen decoders:
SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, RotaryEmbedding) so sessions start
without re-discovering them and run fewer, larger kernels.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from crossrank.errors import UnsupportedModelError

def fuse_transformer(onnx_path: str | Path, optimizer_type: str, num_heads: int, hidden_size: int,
                     for_gpu: bool = False, disabled: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Fuse the graph at ``onnx_path`` with onnxruntime's rules for ``optimizer_type`` (a model type
    of ``onnxruntime.transformers.optimizer``: "bert" for encoders, "qwen3" for Qwen decoders; the
    export registry says which applies to a family; ``disabled`` names FusionOptions flags to turn
    off); returns the fused model and the count of each fused op."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    if optimizer_type not in MODEL_TYPES:
        raise UnsupportedModelError(f"no fusion rules for model type {optimizer_type!r}; onnxruntime knows "
                                    f"{sorted(MODEL_TYPES)}")
    options = FusionOptions(optimizer_type)
    for flag in disabled:
        if not isinstance(getattr(options, flag, None), bool):
            raise UnsupportedModelError(f"{flag!r} is not a FusionOptions flag")
        setattr(options, flag, False)
    optimized = optimize_model(
        str(onnx_path), model_type=optimizer_type, num_heads=num_heads, hidden_size=hidden_size,
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
