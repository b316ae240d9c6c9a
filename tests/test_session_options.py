"""build_session's options (optimisation level, spinning, profiling), and the int8 export's graph
being in its final form: onnxruntime's load-time optimiser has nothing left to fuse."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from crossrank.artifact import MODEL_FILE
from crossrank.errors import InvalidArgumentError
from crossrank.session import build_session
from crossrank.settings import GRAPH_OPTIMIZATIONS, SPINNING_MODES


def _feeds(session, n: int = 2, length: int = 9) -> dict:
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 2000, size=(n, length)), "attention_mask": np.ones((n, length)),
             "token_type_ids": np.zeros((n, length))}
    feeds["attention_mask"][1, 5:] = 0
    names = {i.name for i in session.get_inputs()}
    return {k: v.astype(np.int64) for k, v in feeds.items() if k in names}


@pytest.mark.parametrize("option, value, choices", [("spinning", "sometimes", SPINNING_MODES),
                                                    ("optimization", "max", GRAPH_OPTIMIZATIONS)])
def test_bad_session_options_name_the_choices(bi_int8, option, value, choices):
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{option} {value!r} is not one of {tuple(choices)}")):
        build_session(bi_int8 / MODEL_FILE, **{option: value})


def test_every_optimisation_level_and_spinning_mode_computes_the_same(bi_int8):
    reference = build_session(bi_int8 / MODEL_FILE)
    feeds = _feeds(reference)
    want = reference.run(None, feeds)[0]
    for level in GRAPH_OPTIMIZATIONS:
        for spinning in SPINNING_MODES:
            got = build_session(bi_int8 / MODEL_FILE, optimization=level, spinning=spinning).run(None, feeds)[0]
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{level}, {spinning}")


def test_profile_prefix_writes_a_per_operator_profile(bi_int8, tmp_path):
    session = build_session(bi_int8 / MODEL_FILE, profile_prefix=str(tmp_path / "profile"))
    session.run(None, _feeds(session))
    trace = Path(session.end_profiling())
    assert trace.parent == tmp_path
    ops = {e["args"]["op_name"] for e in json.loads(trace.read_text()) if e.get("cat") == "Node"}
    assert {"MatMulIntegerToFloat", "MultiHeadAttention"} <= ops


def test_int8_export_is_already_in_its_final_form(bi_int8, starter_int8, tmp_path):
    """At the highest load-time level onnxruntime changes nothing in the int8 encoder (only the
    cross-encoder pooler's Gemm + Tanh become one FusedGemm, on one row per pair), so a session
    built at a lower level runs the same kernels."""
    for artifact in (bi_int8, starter_int8):
        exported = collections.Counter(n.op_type for n in onnx.load(str(artifact / MODEL_FILE)).graph.node)
        optimized_path = tmp_path / f"{artifact.parent.name}.onnx"
        build_session(artifact / MODEL_FILE, optimization="all", optimized_model_path=optimized_path)
        optimized = collections.Counter(n.op_type for n in onnx.load(str(optimized_path)).graph.node)
        changed = {op for op in exported | optimized if exported[op] != optimized[op]}
        assert changed <= {"Constant", "Gemm", "Tanh", "FusedGemm"}, {op: (exported[op], optimized[op]) for op in changed}
        assert exported["MatMulIntegerToFloat"] == 24 and exported["MultiHeadAttention"] == 6
