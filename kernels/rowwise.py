"""Batch-invariant int8 for the CPU: integer GEMMs whose activation scales never depend on the batch.

onnxruntime's ``quantize_dynamic`` gives each activation tensor ONE scale per call
(``DynamicQuantizeLinear``), i.e. one scale per batch: every row, padding included, moves every
other row's result. ``quantize_rowwise`` rewrites a fused fp32 encoder so that each activation
row (token) is quantized with a scale that depends on that row only:

- per-row dynamic scales (the default): a symmetric scale per token row, computed in the graph:

      scale_row = max|x_row| / 127             ReduceMax(Abs(x)) over the hidden axis
      q         = round(x / scale_row) + 128   one per-axis QuantizeLinear over [rows, hidden]
      y         = MatMulIntegerToFloat(q, W_q, a_scale=scale_row [.., M, 1], b_scale=w_scale [N],
                                       a_zero_point=128)

  The zero point is the scalar 128 for every row, so MLAS's u8 x s8 GEMM kernels apply
  unchanged; the integer GEMM is exact and every other step is elementwise per row, so a row's
  result is bit-identical whatever its batch mates. For a GELU output (bounded below by -0.17)
  the ``Abs`` pass is skipped: max|x| = max(max x, 0.17).
- static scales (``static_amax``, from ``calibrate_amax`` on real text): one constant scale per
  tensor, QuantizeLinear with constant scale and zero point 128, a scalar a_scale. Batch-invariant
  by construction and two passes cheaper per tensor, but with a fixed clipping range.

Weights are symmetric per output column (zero point 0). ``weight_bits=7`` keeps u8 x s8 pair sums
inside int16: AVX2 without VNNI (``vpmaddubsw``) saturates at 2 x 255 x 127; 8-bit weights are
safe only with VNNI (or on ARM).

The fused ``Attention`` op has its QKV projection inside (``quantize_dynamic`` turns it into
``QAttention``, per-tensor). ``attention="mha"`` splits it out: the QKV projection becomes one
quantized GEMM, split three ways and fed to com.microsoft ``MultiHeadAttention`` with the same
bias and key padding mask (so padding is handled exactly as before). ``attention="fp32"`` leaves
the fused op in float.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crossrank.errors import InvalidArgumentError, check_choice, check_int

PREFIX = "crossrank_int8/"
ATTENTION_MODES = ("mha", "fp32")
GELU_OPS = {"BiasGelu", "Gelu", "FastGelu"}
GELU_MIN = 0.17  # erf-GELU's minimum is -0.16997 (at x = -0.7518)


def weight_quantize(weights: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column quantization of [K, N] weights: (int8 [K, N], scale float32 [N])."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(weights).max(axis=0).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    quantized = np.clip(np.rint(weights / scale), -qmax, qmax).astype(np.int8)
    return quantized, scale.astype(np.float32)


def quantizable_inputs(model: onnx.ModelProto, attention: str = "mha", keep_fp32: str = "") -> list[str]:
    """Float tensors that ``quantize_rowwise`` quantizes (the calibration targets of static scales)."""
    inits = {t.name for t in model.graph.initializer}
    keep = re.compile(keep_fp32) if keep_fp32 else None
    names: list[str] = []
    for node in model.graph.node:
        if keep is not None and keep.search(node.name or node.output[0]):
            continue
        if (node.op_type == "MatMul" and node.input[1] in inits) or (
                node.op_type == "Attention" and attention == "mha" and node.input[1] in inits):
            if node.input[0] not in names:
                names.append(node.input[0])
    return names


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, weight_bits: int, static_amax: Mapping[str, float] | None):
        self.model = model
        self.weight_bits = weight_bits
        self.static_amax = static_amax
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.new_inits: dict[str, onnx.TensorProto] = {}
        self.quantized: dict[str, tuple[str, str]] = {}  # float tensor -> (u8 tensor, its a_scale)
        for name, value in (("one", np.array(1.0, np.float32)), ("zero_point", np.array(128, np.uint8)),
                            ("zero_point_1d", np.array([128], np.uint8)), ("inv127", np.array(1 / 127, np.float32)),
                            ("tiny", np.array(1e-30, np.float32)), ("gelu_min", np.array(GELU_MIN, np.float32)),
                            ("rows", np.array([-1], np.int64)), ("last", np.array([-1], np.int64)),
                            ("end", np.array([2 ** 62], np.int64))):
            self.const(name, value)

    def const(self, name: str, value: np.ndarray) -> str:
        full = name if name.startswith(PREFIX) else PREFIX + name
        self.new_inits.setdefault(full, numpy_helper.from_array(value, full))
        return full

    def weights(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def quantize(self, x: str, nodes: list) -> tuple[str, str]:
        """u8 version of ``x`` (zero point 128) and its a_scale; built once per tensor."""
        if x in self.quantized:
            return self.quantized[x]
        p = PREFIX + re.sub(r"[^A-Za-z0-9_.]+", "_", x).strip("_") + "/"
        if self.static_amax is not None and x in self.static_amax:
            scale = self.const(p + "scale", np.array(max(self.static_amax[x], 1e-30) / 127, np.float32))
            nodes.append(helper.make_node("QuantizeLinear", [x, scale, PREFIX + "zero_point"], [p + "q"], name=p + "q"))
            self.quantized[x] = (p + "q", scale)
            return self.quantized[x]
        producer = self.producer.get(x)
        if producer is not None and producer.op_type in GELU_OPS:
            nodes += [  # GELU output >= -0.17: its largest magnitude is max(max x, 0.17), no Abs pass
                helper.make_node("ReduceMax", [x], [p + "max"], axes=[-1], keepdims=1, name=p + "max"),
                helper.make_node("Max", [p + "max", PREFIX + "gelu_min"], [p + "amax"], name=p + "amax"),
            ]
        else:
            nodes += [
                helper.make_node("Abs", [x], [p + "abs"], name=p + "abs"),
                helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1, name=p + "max"),
                helper.make_node("Max", [p + "max", PREFIX + "tiny"], [p + "amax"], name=p + "amax"),
            ]
        nodes += [
            helper.make_node("Mul", [p + "amax", PREFIX + "inv127"], [p + "scale"], name=p + "scale"),
            # QuantizeLinear per row: [rows, hidden] with a 1-D scale and zero point on axis 0.
            helper.make_node("Reshape", [p + "scale", PREFIX + "rows"], [p + "scale_1d"], name=p + "scale_1d"),
            helper.make_node("Shape", [p + "scale_1d"], [p + "rows_shape"], name=p + "rows_shape"),
            helper.make_node("Expand", [PREFIX + "zero_point_1d", p + "rows_shape"], [p + "zero_points"],
                             name=p + "zero_points"),
            helper.make_node("Shape", [x], [p + "shape"], name=p + "shape"),
            helper.make_node("Slice", [p + "shape", PREFIX + "last", PREFIX + "end"], [p + "hidden"], name=p + "hidden"),
            helper.make_node("Concat", [PREFIX + "rows", p + "hidden"], [p + "shape_2d"], axis=0, name=p + "shape_2d"),
            helper.make_node("Reshape", [x, p + "shape_2d"], [p + "x_2d"], name=p + "x_2d"),
            helper.make_node("QuantizeLinear", [p + "x_2d", p + "scale_1d", p + "zero_points"], [p + "q_2d"], axis=0,
                             name=p + "q_2d"),
            helper.make_node("Reshape", [p + "q_2d", p + "shape"], [p + "q"], name=p + "q"),
        ]
        self.quantized[x] = (p + "q", p + "scale")
        return self.quantized[x]

    def matmul(self, x: str, weights: np.ndarray, out: str, name: str, nodes: list) -> None:
        """``out = x @ weights`` as an integer GEMM with per-column weight scales."""
        q, a_scale = self.quantize(x, nodes)
        wq, wscale = weight_quantize(weights, self.weight_bits)
        w_name = self.const(name + "/w_q", wq)
        s_name = self.const(name + "/w_scale", wscale)
        # A per-row a_scale [.., M, 1] is applied by the kernel after MLAS's per-column stage, so no
        # bias may be fused here (it would be scaled too): BERT's biases live in the next op anyway.
        nodes.append(helper.make_node("MatMulIntegerToFloat", [q, w_name, a_scale, s_name, PREFIX + "zero_point"],
                                      [out], domain="com.microsoft", name=PREFIX + name))

    def attention(self, node: onnx.NodeProto, weights: np.ndarray, nodes: list) -> None:
        """Fused Attention -> quantized QKV projection(s) + MultiHeadAttention (same bias and mask)."""
        name = node.name or node.output[0]
        hidden = weights.shape[1] // 3
        parts = [PREFIX + name + s for s in ("/q", "/k", "/v")]
        qkv = PREFIX + name + "/qkv"
        self.matmul(node.input[0], weights, qkv, name + "/qkv", nodes)
        split = self.const(name + "/split", np.array([hidden] * 3, np.int64))
        nodes.append(helper.make_node("Split", [qkv, split], parts, axis=-1, name=PREFIX + name + "/split"))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        unknown = set(attrs) - {"num_heads", "mask_filter_value", "scale"}
        if unknown:
            raise InvalidArgumentError(f"Attention node {name!r} has attributes {sorted(unknown)} that MultiHeadAttention "
                             f"does not take; quantize it with attention='fp32'")
        nodes.append(helper.make_node("MultiHeadAttention", parts + [node.input[2], node.input[3]], [node.output[0]],
                                      domain="com.microsoft", name=PREFIX + name + "/mha", **attrs))


def quantize_rowwise(model: onnx.ModelProto, *, weight_bits: int = 7, attention: str = "mha",
                     keep_fp32: str = "", static_amax: Mapping[str, float] | None = None) -> onnx.ModelProto:
    """Rewrite a fused fp32 encoder graph in place and return it.

    Every MatMul with a constant 2-D weight (and, with ``attention="mha"``, every fused Attention's
    QKV projection) becomes an int8 GEMM: per-row dynamic activation scales, or, given
    ``static_amax`` (tensor name -> calibrated largest magnitude, from ``calibrate_amax`` over the
    names of ``quantizable_inputs``), static ones for the tensors it names. Nodes whose name
    matches the regex ``keep_fp32`` stay float.
    """
    check_choice(attention, "attention", ATTENTION_MODES)
    check_int(weight_bits, "weight_bits", 2, 8)
    keep = re.compile(keep_fp32) if keep_fp32 else None
    rewriter = _Rewriter(model, weight_bits, static_amax)
    nodes: list = []
    replaced: set[str] = set()
    for node in model.graph.node:
        kept = keep is not None and keep.search(node.name or node.output[0])
        weights = None if kept else rewriter.weights(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "MatMul" and weights is not None and weights.ndim == 2:
            rewriter.matmul(node.input[0], weights, node.output[0], node.name or node.output[0], nodes)
            replaced.add(node.input[1])
        elif (node.op_type == "Attention" and node.domain == "com.microsoft" and attention == "mha"
              and weights is not None and len(node.input) >= 4 and node.input[3]):
            rewriter.attention(node, weights, nodes)
            replaced.add(node.input[1])
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    kept_inits = [t for t in model.graph.initializer if t.name not in replaced or t.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits + [t for name, t in rewriter.new_inits.items() if name in used])
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def calibrate_amax(model: onnx.ModelProto, names: list[str], feeds, percentile: float = 100.0) -> dict[str, float]:
    """Largest magnitude of each named float tensor over the calibration ``feeds`` (input dicts) when
    ``model`` (fp32) runs them; ``percentile`` < 100 clips outliers (percentile of |x| over all
    values of the tensor, real tokens and padding alike)."""
    from crossrank.session import build_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in known)
    session = build_session(probe.SerializeToString(), optimization="disable")
    input_names = {i.name for i in session.get_inputs()}
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        outs = session.run(names, {k: v for k, v in feed.items() if k in input_names})
        for name, out in zip(names, outs):
            values[name].append(np.abs(out).ravel() if percentile < 100 else np.abs(out).max().reshape(1))
    return {name: float(np.percentile(np.concatenate(v), percentile) if percentile < 100 else np.concatenate(v).max())
            for name, v in values.items()}
