"""Heads spliced onto the encoder graph so that one ONNX call returns the final numbers.

- bi-encoder: masked mean (or CLS) pooling, then L2 normalisation -> ``embeddings`` [batch, dim]
- cross-encoder: one raw logit per pair -> ``logits`` [batch]; the engine applies the manifest's
  activation, so raw scores stay available.
- decoder yes/no reranker: the last real token's hidden state . (W_yes - W_no) -> ``logits``
  [batch], i.e. logit_yes - logit_no at the last position without the vocabulary projection
  (rows are right-padded: a causal model's real tokens never see the padding after them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crossrank.errors import UnsupportedModelError

# Same epsilons as sentence-transformers' Pooling (clamp 1e-9) and torch.nn.functional.normalize.
MASK_COUNT_EPS = 1e-9
NORM_EPS = 1e-12
HEAD_PREFIX = "crossrank_head/"


def _opset(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), HEAD_PREFIX + name)


def _replace_outputs(model: onnx.ModelProto, nodes, initializers, output: onnx.ValueInfoProto) -> None:
    graph = model.graph
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    del graph.output[:]
    graph.output.append(output)


def _find_output(model: onnx.ModelProto, name: str) -> str:
    names = [out.name for out in model.graph.output]
    if name not in names:
        raise UnsupportedModelError(f"graph has no output {name!r}; its outputs are {names}")
    return name


def add_pooling_head(
    model: onnx.ModelProto,
    pooling: str = "mean",
    normalize: bool = True,
    hidden_output: str = "last_hidden_state",
    mask_input: str = "attention_mask",
    output_name: str = "embeddings",
) -> onnx.ModelProto:
    """Replace the graph outputs by pooled (and L2-normalised) sentence embeddings [batch, dim]."""
    if pooling not in ("mean", "cls"):
        raise UnsupportedModelError(f"pooling {pooling!r} is not supported; use 'mean' or 'cls'")
    hidden = _find_output(model, hidden_output)
    p = HEAD_PREFIX
    opset = _opset(model)
    nodes, inits = [], []
    if pooling == "mean":
        inits += [_const("axis_last", [-1], np.int64), _const("axis_tokens", [1], np.int64),
                  _const("count_eps", MASK_COUNT_EPS)]
        nodes += [
            helper.make_node("Cast", [mask_input], [p + "mask_f"], to=TensorProto.FLOAT, name=p + "cast_mask"),
            helper.make_node("Unsqueeze", [p + "mask_f", p + "axis_last"], [p + "mask3"], name=p + "unsqueeze_mask"),
            helper.make_node("Mul", [hidden, p + "mask3"], [p + "masked"], name=p + "mask_tokens"),
            helper.make_node("ReduceSum", [p + "masked", p + "axis_tokens"], [p + "summed"], keepdims=0, name=p + "sum_tokens"),
            helper.make_node("ReduceSum", [p + "mask3", p + "axis_tokens"], [p + "count"], keepdims=0, name=p + "count_tokens"),
            helper.make_node("Max", [p + "count", p + "count_eps"], [p + "count_safe"], name=p + "clamp_count"),
            helper.make_node("Div", [p + "summed", p + "count_safe"], [p + "pooled"], name=p + "mean"),
        ]
    else:
        inits.append(_const("first_token", 0, np.int64))
        nodes.append(helper.make_node("Gather", [hidden, p + "first_token"], [p + "pooled"], axis=1, name=p + "cls"))
    pooled = p + "pooled"
    if normalize:
        inits.append(_const("norm_eps", NORM_EPS))
        if opset >= 18:
            inits.append(_const("axis_dim", [1], np.int64))
            l2 = helper.make_node("ReduceL2", [pooled, p + "axis_dim"], [p + "norm"], keepdims=1, name=p + "l2")
        else:
            l2 = helper.make_node("ReduceL2", [pooled], [p + "norm"], axes=[1], keepdims=1, name=p + "l2")
        nodes += [
            l2,
            helper.make_node("Max", [p + "norm", p + "norm_eps"], [p + "norm_safe"], name=p + "clamp_norm"),
            helper.make_node("Div", [pooled, p + "norm_safe"], [output_name], name=p + "normalize"),
        ]
    else:
        nodes.append(helper.make_node("Identity", [pooled], [output_name], name=p + "output"))
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", "dim"])
    _replace_outputs(model, nodes, inits, out)
    return model


def add_score_head(
    model: onnx.ModelProto,
    num_labels: int = 1,
    logits_output: str = "logits",
    output_name: str = "logits",
) -> onnx.ModelProto:
    """Turn classifier logits [batch, num_labels] into one raw score per pair [batch].

    One label: the logit itself. Two labels: logit[1] - logit[0], whose sigmoid equals the
    softmax probability of the positive class.
    """
    if num_labels not in (1, 2):
        raise UnsupportedModelError(f"a cross-encoder needs 1 or 2 labels, the model has {num_labels}")
    source = _find_output(model, logits_output)
    p = HEAD_PREFIX
    renamed = p + "raw_logits"
    for node in model.graph.node:  # free the name "logits" for the head's output
        node.output[:] = [renamed if o == source else o for o in node.output]
        node.input[:] = [renamed if i == source else i for i in node.input]
    if num_labels == 1:
        inits = [_const("flat", [-1], np.int64)]
        nodes = [helper.make_node("Reshape", [renamed, p + "flat"], [output_name], name=p + "score")]
    else:
        inits = [_const("label0", 0, np.int64), _const("label1", 1, np.int64)]
        nodes = [
            helper.make_node("Gather", [renamed, p + "label0"], [p + "neg"], axis=1, name=p + "neg"),
            helper.make_node("Gather", [renamed, p + "label1"], [p + "pos"], axis=1, name=p + "pos"),
            helper.make_node("Sub", [p + "pos", p + "neg"], [output_name], name=p + "score"),
        ]
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch"])
    _replace_outputs(model, nodes, inits, out)
    return model


def add_yes_no_head(
    model: onnx.ModelProto,
    answer_direction: np.ndarray,
    hidden_output: str = "last_hidden_state",
    mask_input: str = "attention_mask",
    output_name: str = "logits",
) -> onnx.ModelProto:
    """Replace the graph outputs by one logit per row [batch]: hidden[row, last real token] .
    ``answer_direction`` (W_yes - W_no, [hidden]). The last real token of a right-padded row is at
    sum(mask) - 1. The product stays a Mul + ReduceSum, so no int8 recipe ever quantizes it."""
    hidden = _find_output(model, hidden_output)
    p = HEAD_PREFIX
    direction = np.asarray(answer_direction, dtype=np.float32).reshape(-1)
    inits = [_const("one", [1], np.int64), _const("axis_tokens", [1], np.int64), _const("axis_last", [-1], np.int64),
             numpy_helper.from_array(direction, p + "answer_direction")]
    nodes = [
        helper.make_node("ReduceSum", [mask_input, p + "axis_tokens"], [p + "lengths"], keepdims=1, name=p + "lengths"),
        helper.make_node("Sub", [p + "lengths", p + "one"], [p + "last_index"], name=p + "last_index"),
        helper.make_node("GatherND", [hidden, p + "last_index"], [p + "last_hidden"], batch_dims=1,
                         name=p + "last_token"),
        helper.make_node("Mul", [p + "last_hidden", p + "answer_direction"], [p + "products"], name=p + "products"),
        helper.make_node("ReduceSum", [p + "products", p + "axis_last"], [output_name], keepdims=0, name=p + "score"),
    ]
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch"])
    _replace_outputs(model, nodes, inits, out)
    return model


def add_positions(model: onnx.ModelProto, positions_input: str = "position_ids",
                  ids_input: str = "input_ids") -> onnx.ModelProto:
    """Compute the graph input ``positions_input`` inside the graph as 0..length-1 for every row
    (exact for right-padded rows) and drop it from the inputs: the artifact takes the same inputs
    as an encoder's."""
    names = [i.name for i in model.graph.input]
    if positions_input not in names:
        return model
    p = HEAD_PREFIX
    inits = [_const("zero", 0, np.int64), _const("step", 1, np.int64), _const("tokens_dim", 1, np.int64),
             _const("axis_rows", [0], np.int64)]
    nodes = [
        helper.make_node("Shape", [ids_input], [p + "ids_shape"], name=p + "ids_shape"),
        helper.make_node("Gather", [p + "ids_shape", p + "tokens_dim"], [p + "tokens"], axis=0, name=p + "tokens"),
        helper.make_node("Range", [p + "zero", p + "tokens", p + "step"], [p + "range"], name=p + "range"),
        helper.make_node("Unsqueeze", [p + "range", p + "axis_rows"], [p + "range_row"], name=p + "range_row"),
        helper.make_node("Expand", [p + "range_row", p + "ids_shape"], [positions_input], name=p + "positions"),
    ]
    del model.graph.input[names.index(positions_input)]
    rest = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + rest)  # before every consumer (topological order)
    model.graph.initializer.extend(inits)
    return model


def head_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes this module added (kept in fp32 by the fp16 recipe)."""
    return [node.name for node in model.graph.node if node.name.startswith(HEAD_PREFIX)]


# Plain numpy references, used by the numerical tests of the heads.

def reference_pooling(hidden: np.ndarray, mask: np.ndarray, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
    hidden = hidden.astype(np.float64)
    if pooling == "mean":
        weights = mask.astype(np.float64)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), MASK_COUNT_EPS)
    else:
        pooled = hidden[:, 0, :]
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), NORM_EPS)
    return pooled


def reference_score(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def reference_yes_no(hidden: np.ndarray, mask: np.ndarray, answer_direction: np.ndarray) -> np.ndarray:
    hidden = hidden.astype(np.float64)
    last = mask.astype(np.int64).sum(axis=1) - 1
    return hidden[np.arange(len(hidden)), last] @ np.asarray(answer_direction, np.float64)
