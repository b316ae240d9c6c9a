"""int8 recipes for the CPU execution provider.

A score must not depend on the other documents of its batch, so the default recipe quantizes
activations with a scale per token row (``crossrank.kernels.rowwise``): batch-invariant, and
more faithful than onnxruntime's ``quantize_dynamic``, whose one scale per activation tensor is
one scale per batch. Those per-tensor recipes are kept for comparison only, under names that say
``batchdependent``.

On AVX2 without VNNI, onnxruntime's u8 x s8 integer GEMM sums pairs of products in int16
(``vpmaddubsw``) and can saturate; 7-bit weights (``reduce_range``, ``-rr``) avoid that, so the
default uses them even where VNNI would allow 8 bits. ``benchmarks/int8_recipes.py``
(``make bench-int8``) measures every recipe's fidelity, batch invariance and speed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx

from crossrank.errors import InvalidArgumentError


ACTIVATION_SCALES = ("per-row dynamic", "static", "per-tensor dynamic")


@dataclass(frozen=True)
class Int8Recipe:
    name: str
    format: str            # "rowwise" (crossrank.kernels.rowwise), "QOperator" (quantize_dynamic) or "QDQ" (quantize_static)
    activation_type: str   # "u8" or "s8"
    weight_type: str       # "s8" or "u8"
    per_channel: bool
    reduce_range: bool     # 7-bit weights
    description: str
    keep_fp32: str = ""    # regex over node names left in float (empty: quantize every MatMul/Attention)
    activation_scales: str = "per-row dynamic"  # one of ACTIVATION_SCALES
    attention: str = "mha"  # rowwise: "mha" (quantized QKV + MultiHeadAttention) or "fp32"; QOperator: "qattention"

    @property
    def batch_invariant(self) -> bool:
        """True when no activation scale depends on the batch (a score is the same in any batch)."""
        return self.activation_scales != "per-tensor dynamic"

    @property
    def needs_calibration(self) -> bool:
        return self.activation_scales == "static"

    def as_manifest(self) -> dict:
        return {**asdict(self), "batch_invariant": self.batch_invariant}


# Node names optimum gives the FFN down-projection of every layer, BERT and XLM-R alike.
FFN_DOWN_PROJECTION = r"layer\.\d+/output/dense/MatMul$"

PER_TENSOR = "per-tensor dynamic"
BATCH_DEPENDENT = "dynamic-pertensor-batchdependent-"

RECIPES: dict[str, Int8Recipe] = {
    recipe.name: recipe
    for recipe in (
        Int8Recipe("dynamic-perrow-u8s8-perchannel-rr", "rowwise", "u8", "s8", True, True,
                   "per-row (per-token) symmetric u8 activations, per-channel 7-bit weights; every "
                   "projection int8, QKV split out of the fused Attention into MultiHeadAttention"),
        Int8Recipe("dynamic-perrow-u8s8-perchannel", "rowwise", "u8", "s8", True, False,
                   "as the default with 8-bit weights: more faithful, but u8 x s8 pair sums saturate "
                   "int16 on AVX2 without VNNI"),
        Int8Recipe("dynamic-perrow-u8s8-perchannel-rr-ffn-fp32", "rowwise", "u8", "s8", True, True,
                   "as the default with the FFN down-projection left in fp32", keep_fp32=FFN_DOWN_PROJECTION),
        Int8Recipe("dynamic-perrow-u8s8-perchannel-rr-attention-fp32", "rowwise", "u8", "s8", True, True,
                   "as the default with the fused Attention (QKV projection included) left in fp32",
                   attention="fp32"),
        Int8Recipe("static-u8s8-perchannel-rr", "rowwise", "u8", "s8", True, True,
                   "static per-tensor u8 activation scales (largest magnitude on Semanlink text), "
                   "QuantizeLinear + MatMulIntegerToFloat", activation_scales="static"),
        Int8Recipe("static-qdq-s8s8-perchannel", "QDQ", "s8", "s8", True, False,
                   "static QDQ, S8S8, calibrated on real text (MinMax)", activation_scales="static",
                   attention="fp32"),
        Int8Recipe(BATCH_DEPENDENT + "u8s8", "QOperator", "u8", "s8", False, False,
                   "onnxruntime quantize_dynamic defaults: one activation scale per tensor per call "
                   "(batch-dependent), per-tensor 8-bit weights",
                   activation_scales=PER_TENSOR, attention="qattention"),
        Int8Recipe(BATCH_DEPENDENT + "u8s8-perchannel", "QOperator", "u8", "s8", True, False,
                   "quantize_dynamic (batch-dependent), per-channel 8-bit weights",
                   activation_scales=PER_TENSOR, attention="qattention"),
        Int8Recipe(BATCH_DEPENDENT + "u8s8-perchannel-rr", "QOperator", "u8", "s8", True, True,
                   "quantize_dynamic (batch-dependent), per-channel 7-bit weights",
                   activation_scales=PER_TENSOR, attention="qattention"),
        Int8Recipe(BATCH_DEPENDENT + "u8s8-perchannel-rr-ffn-fp32", "QOperator", "u8", "s8", True, True,
                   "quantize_dynamic (batch-dependent), per-channel 7-bit weights, FFN down-projection "
                   "fp32: the default before per-row scales", keep_fp32=FFN_DOWN_PROJECTION,
                   activation_scales=PER_TENSOR, attention="qattention"),
    )
}
DEFAULT_INT8_RECIPE = "dynamic-perrow-u8s8-perchannel-rr"
# Names of the per-tensor recipes before they were renamed to say they are batch-dependent.
RENAMED = {old: BATCH_DEPENDENT + old.removeprefix("dynamic-")
           for old in ("dynamic-u8s8", "dynamic-u8s8-perchannel", "dynamic-u8s8-perchannel-rr",
                       "dynamic-u8s8-perchannel-rr-ffn-fp32")}


def get_recipe(name: str) -> Int8Recipe:
    if name in RENAMED:
        raise InvalidArgumentError(f"int8 recipe {name!r} is now {RENAMED[name]!r}: its activation scales depend on the "
                         f"batch, so a score changes with its batch mates; the default "
                         f"{DEFAULT_INT8_RECIPE!r} does not")
    try:
        return RECIPES[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown int8 recipe {name!r}; choose one of {sorted(RECIPES)}") from None


def quantize_int8(src: str | Path, dst: str | Path, recipe: Int8Recipe,
                  calibration_feeds: Iterable[dict[str, np.ndarray]] | None = None) -> None:
    """Write an int8 version of the fp32 graph ``src`` to ``dst`` following ``recipe``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if recipe.format == "rowwise":
        _quantize_rowwise(src, dst, recipe, calibration_feeds)
        return
    excluded = _nodes_matching(src, recipe.keep_fp32)
    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    if recipe.format == "QOperator":
        quantize_dynamic(
            str(src), str(dst), weight_type=qtype[recipe.weight_type],
            per_channel=recipe.per_channel, reduce_range=recipe.reduce_range, nodes_to_exclude=excluded,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return
    if calibration_feeds is None:
        raise InvalidArgumentError(f"int8 recipe {recipe.name!r} is static and needs calibration text")
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self._feeds: Iterator = iter(list(feeds))

        def get_next(self):
            return next(self._feeds, None)

    from onnxruntime.quantization import CalibrationMethod

    quantize_static(
        str(src), str(dst), _Reader(calibration_feeds), quant_format=QuantFormat.QDQ,
        activation_type=qtype[recipe.activation_type], weight_type=qtype[recipe.weight_type],
        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range, nodes_to_exclude=excluded,
        op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": True,
                       "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _quantize_rowwise(src, dst, recipe: Int8Recipe, calibration_feeds) -> None:
    from crossrank.kernels.graph_files import save_graph
    from crossrank.kernels.rowwise import calibrate_amax, quantizable_inputs, quantize_rowwise

    model = onnx.load(str(src))
    attention = recipe.attention if recipe.attention in ("mha", "fp32") else "mha"
    static_amax = None
    if recipe.needs_calibration:
        if calibration_feeds is None:
            raise InvalidArgumentError(f"int8 recipe {recipe.name!r} is static and needs calibration text")
        names = quantizable_inputs(model, attention, recipe.keep_fp32)
        static_amax = calibrate_amax(model, names, calibration_feeds)
    quantize_rowwise(model, weight_bits=7 if recipe.reduce_range else 8, attention=attention,
                     keep_fp32=recipe.keep_fp32, static_amax=static_amax)
    save_graph(model, dst)


def _nodes_matching(model_path: str | Path, pattern: str) -> list[str]:
    if not pattern:
        return []
    regex = re.compile(pattern)
    model = onnx.load(str(model_path), load_external_data=False)
    return [node.name for node in model.graph.node if regex.search(node.name)]
