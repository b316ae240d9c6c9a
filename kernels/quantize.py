"""int8 recipes for the CPU execution provider.

This machine's CPU has AVX2 and no VNNI. There, onnxruntime's u8 x s8 integer GEMM sums pairs of
products in int16 (``vpmaddubsw``) and can saturate; 7-bit weights (``reduce_range``) avoid that.
Each recipe is one combination of format (QOperator dynamic vs QDQ static), weight signedness,
per-channel scales and reduce_range; ``benchmarks/int8_recipes.py`` measures fidelity and speed
of every recipe and the default is the measured best.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx


@dataclass(frozen=True)
class Int8Recipe:
    name: str
    format: str            # "QOperator" (dynamic: activations quantized per call) or "QDQ" (static, calibrated)
    activation_type: str   # "u8" or "s8"
    weight_type: str       # "s8" or "u8"
    per_channel: bool
    reduce_range: bool
    description: str
    keep_fp32: str = ""    # regex over node names left in float (empty: quantize every MatMul/Attention)

    def as_manifest(self) -> dict:
        return asdict(self)


# Node names optimum gives the FFN down-projection of every layer, BERT and XLM-R alike.
FFN_DOWN_PROJECTION = r"layer\.\d+/output/dense/MatMul$"

RECIPES: dict[str, Int8Recipe] = {
    recipe.name: recipe
    for recipe in (
        Int8Recipe("dynamic-u8s8", "QOperator", "u8", "s8", False, False,
                   "onnxruntime quantize_dynamic defaults: per-tensor 8-bit weights"),
        Int8Recipe("dynamic-u8s8-perchannel", "QOperator", "u8", "s8", True, False,
                   "per-channel 8-bit weights"),
        Int8Recipe("dynamic-u8s8-perchannel-rr", "QOperator", "u8", "s8", True, True,
                   "per-channel 7-bit weights: no int16 saturation on AVX2 without VNNI"),
        Int8Recipe("dynamic-u8s8-perchannel-rr-ffn-fp32", "QOperator", "u8", "s8", True, True,
                   "per-channel 7-bit weights; the FFN down-projection (input: GELU output with "
                   "long-tailed activations) stays fp32", keep_fp32=FFN_DOWN_PROJECTION),
        Int8Recipe("static-qdq-s8s8-perchannel", "QDQ", "s8", "s8", True, False,
                   "static QDQ, S8S8, calibrated on real text (MinMax)"),
    )
}
DEFAULT_INT8_RECIPE = "dynamic-u8s8-perchannel-rr-ffn-fp32"


def get_recipe(name: str) -> Int8Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown int8 recipe {name!r}; choose one of {sorted(RECIPES)}") from None


def quantize_int8(src: str | Path, dst: str | Path, recipe: Int8Recipe,
                  calibration_feeds: Iterable[dict[str, np.ndarray]] | None = None) -> None:
    """Write an int8 version of the fp32 graph ``src`` to ``dst`` following ``recipe``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

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
        raise ValueError(f"int8 recipe {recipe.name!r} is static and needs calibration text")
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


def _nodes_matching(model_path: str | Path, pattern: str) -> list[str]:
    if not pattern:
        return []
    regex = re.compile(pattern)
    model = onnx.load(str(model_path), load_external_data=False)
    return [node.name for node in model.graph.node if regex.search(node.name)]
