"""Backends and precisions: OpenVINO beside ONNX Runtime behind the one session builder, the ISA
rule that picks the default, bf16 refused on a CPU without AVX-512 BF16/AMX, certificates.

Fidelity figures here come from real weights (the starter reranker, MiniLM) measured against
PyTorch by ``crossrank certify``; the certificate *rules* (foreign sha, below the bar, another
bf16 path, sharing) are exercised on records written by the real writer with chosen figures, and
the bf16 acceptance path on a CPU flag set the test supplies: it checks the rules, not bf16
numerics, which this AVX2 machine cannot compute (docs/api.md says what is unmeasured).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import crossrank
from crossrank.artifact import MODEL_FILE
from crossrank.certificate import CERTIFICATES_FILE, read_certificates, write_certificate
from crossrank.errors import DeviceUnavailableError, FidelityError, InvalidArgumentError, UsageError
from crossrank.isa import (bf16_path, cpu_flags, default_runtime, describe_cpu, missing_bf16_flags, parse_cpuinfo,
                           preferred)
from crossrank.session import build_session
from crossrank.settings import RUNTIME_FILE, read_runtime, write_runtime

pytest.importorskip("openvino")

AMX = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX2 = frozenset({"avx", "avx2", "fma"})
# OpenVINO f32 against ONNX Runtime fp32 on the same graph: the export's fp32 bar (logits). Measured
# on the starter reranker: 2.4e-6 (AMD EPYC, AVX2).
OPENVINO_FP32_TOLERANCE = 1e-4
TOLERANCE = 1e-5  # batch invariance (crossrank.certificate.BATCH_INVARIANCE_TOLERANCE)


# -- the ISA rule: a pure function over flag sets ----------------------------------------------------

def test_the_isa_rule_over_flag_sets():
    assert preferred(AMX)[:2] == ("openvino", "bf16")
    assert preferred(AVX512_BF16)[:2] == ("openvino", "bf16")
    assert preferred(VNNI)[:2] == ("onnxruntime", "artifact")
    assert preferred(AVX2)[:2] == ("onnxruntime", "artifact")
    assert preferred(frozenset())[:2] == ("onnxruntime", "artifact")
    assert bf16_path(AMX) == "amx" and bf16_path(AVX512_BF16) == "avx512_bf16" and bf16_path(VNNI) is None
    assert missing_bf16_flags(AVX2) == ["amx_bf16", "amx_tile", "avx512_bf16"] and missing_bf16_flags(AMX) == []
    ready = dict(openvino_installed=True, bf16_certified=True)
    assert default_runtime(AMX, "fp32", **ready)[:2] == ("openvino", "bf16")
    assert default_runtime(AVX512_BF16, "fp32", **ready)[:2] == ("openvino", "bf16")
    # AVX2 (this project's machine) and VNNI keep ONNX Runtime at the artifact's precision: int8 stays int8
    assert default_runtime(AVX2, "int8", **ready)[:2] == ("onnxruntime", "int8")
    assert default_runtime(VNNI, "int8", **ready)[:2] == ("onnxruntime", "int8")
    assert default_runtime(AVX2, "fp32", **ready)[:2] == ("onnxruntime", "fp32")
    # bf16 only for an fp32 artifact, with openvino installed and a passing certificate
    assert default_runtime(AMX, "int8", **ready)[:2] == ("onnxruntime", "int8")
    choice = default_runtime(AMX, "fp32", openvino_installed=False, bf16_certified=True)
    assert choice[:2] == ("onnxruntime", "fp32") and "openvino package is not installed" in choice.reason
    choice = default_runtime(AMX, "fp32", openvino_installed=True, bf16_certified=False)
    assert choice[:2] == ("onnxruntime", "fp32") and "crossrank certify" in choice.reason
    assert default_runtime(AMX, "fp32", "cuda", **ready)[:2] == ("onnxruntime", "fp32")


def test_cpuinfo_is_read_from_its_flags_line():
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f "
            "avx512_bf16 amx_tile amx_bf16 amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    model, flags = parse_cpuinfo(text)
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and bf16_path(flags) == "amx"
    assert describe_cpu(flags, model) == ("Intel(R) Xeon(R) Platinum 8480+; ISA: avx2 avx512f avx512_bf16 amx_tile "
                                          "amx_bf16 amx_int8")
    assert describe_cpu(AVX2, "AMD EPYC") == "AMD EPYC; ISA: avx2 (no AVX-512, no AVX-512 BF16, no AMX)"
    assert cpu_flags() == cpu_flags()  # read once, cached


# -- OpenVINO f32 computes what ONNX Runtime fp32 computes --------------------------------------------

def _pairs(trec_rag, n_queries=3, per_query=8):
    return [(r["query"], d) for r in trec_rag[:n_queries] for d in r["documents"][:per_query]]


@pytest.mark.parametrize("which", ["tiny_cross", "starter_fp32"])
def test_openvino_fp32_equals_onnxruntime_fp32(which, request, trec_rag):
    artifact = request.getfixturevalue(which)
    pairs = _pairs(trec_rag)
    ort = crossrank.Reranker(artifact, threads=2, backend="onnxruntime")
    ov = crossrank.Reranker(artifact, threads=2, backend="openvino")
    runtime = ov.describe()["runtime"]
    assert (ov.backend, ov.precision, runtime["backend"], runtime["computes_in"]) == ("openvino", "fp32", "openvino",
                                                                                      "f32")
    want, got = ort.score(pairs, raw_scores=True), ov.score(pairs, raw_scores=True)
    assert np.max(np.abs(want - got)) <= OPENVINO_FP32_TOLERANCE
    assert ov.stats().rows == len(pairs)


def test_openvino_embedder_equals_onnxruntime(bi_fp32, trec_rag):
    texts = [d for r in trec_rag[:2] for d in r["documents"][:6]]
    want = crossrank.Embedder(bi_fp32, threads=2).embed(texts)
    got = crossrank.Embedder(bi_fp32, threads=2, backend="openvino").embed(texts)
    assert float(np.min(np.sum(want * got, axis=1))) >= 0.99999
    assert np.max(np.abs(want - got)) <= 1e-5


def test_openvino_refuses_what_it_cannot_run(tiny_cross, starter_int8):
    with pytest.raises(crossrank.ArtifactError, match=r"OpenVINO cannot run .*backend='onnxruntime'"):
        crossrank.Reranker(starter_int8, backend="openvino")  # the per-row int8 recipe's FakeQuantize
    with pytest.raises(crossrank.ArtifactError, match=r"outputs for a batch of 2 rows have shapes \[\(0,\)\]"):
        crossrank.Reranker(starter_int8, backend="openvino", threads=1)  # with one thread: empty outputs
    with pytest.raises(InvalidArgumentError, match="runs on device='cpu', not 'cuda'"):
        build_session(tiny_cross / MODEL_FILE, device="cuda", backend="openvino")
    with pytest.raises(InvalidArgumentError, match="profile_prefix and optimized_model_path are ONNX Runtime's"):
        crossrank.Reranker(tiny_cross, backend="openvino", options=crossrank.SessionOptions(profile_prefix="x"))
    with pytest.raises(InvalidArgumentError, match="backend 'tensorrt' is not one of"):
        crossrank.Reranker(tiny_cross, backend="tensorrt")
    with pytest.raises(InvalidArgumentError, match=r"precision='int8' but the artifact .* is fp32"):
        crossrank.Reranker(tiny_cross, precision="int8")
    with pytest.raises(InvalidArgumentError, match="precision='bf16' needs backend='openvino'"):
        build_session(tiny_cross / MODEL_FILE, precision="bf16")


def test_openvino_is_imported_only_when_asked(tiny_cross):
    code = ("import sys, crossrank; r = crossrank.Reranker(sys.argv[1]); r.score([('a', 'b')]); "
            "assert 'openvino' not in sys.modules, 'onnxruntime model imported openvino'; "
            "crossrank.Reranker(sys.argv[1], backend='openvino'); assert 'openvino' in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code, str(tiny_cross)], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


# -- batch invariance on OpenVINO f32 (within 1e-5 logit; not bit-identical, unlike ORT int8) --------

@pytest.fixture(scope="module")
def texts(trec_rag):
    query = trec_rag[0]["query"]
    pool = sorted({d for row in trec_rag[1:] for d in row["documents"]}, key=len)
    return query, trec_rag[0]["documents"][:3], pool[:8], " ".join(pool[-4:])


def test_openvino_fp32_score_is_independent_of_batch_mates(starter_fp32, texts):
    query, targets, short, long_mate = texts
    reranker = crossrank.Reranker(starter_fp32, backend="openvino", threads=2, batch_tokens=1 << 20)
    assert reranker.token_lengths([(query, long_mate)])[0] == 512
    worst = 0.0
    for target in targets:
        alone = reranker.score([(query, target)], raw_scores=True)[0]
        seen = []
        for position in (0, 4, len(short)):
            docs = short[:position] + [target] + short[position:]
            seen.append(reranker.score([(query, d) for d in docs], raw_scores=True)[position])
        for docs, position in (([long_mate, target], 1), ([target, long_mate], 0),
                               ([long_mate] + short[:3] + [target], 4)):
            seen.append(reranker.score([(query, d) for d in docs], raw_scores=True)[position])
        seen.extend(reranker.score([(query, target)] * 12 + [(query, long_mate)], raw_scores=True)[:12])
        worst = max(worst, float(np.max(np.abs(np.asarray(seen) - alone))))
    assert worst <= TOLERANCE, f"a logit moved by {worst:.3g} with its batch mates"


def test_shared_openvino_reranker_gives_each_request_its_alone_answer(starter_fp32, trec_rag):
    from concurrent.futures import ThreadPoolExecutor

    requests = [(r["query"], r["documents"][:6]) for r in trec_rag[:6]]
    plain = crossrank.Reranker(starter_fp32, backend="openvino", threads=1)
    alone = [plain.score([(q, d) for d in docs], raw_scores=True) for q, docs in requests]
    shared = crossrank.Reranker(starter_fp32, backend="openvino", threads=1, shared=True, workers=2)
    try:
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda r: shared.score([(r[0], d) for d in r[1]], raw_scores=True), requests))
    finally:
        shared.close()
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(alone, together))
    assert worst <= TOLERANCE, f"a shared request's logit moved by {worst:.3g}"


# -- precision: bf16 refused on this CPU; certificates ------------------------------------------------

@pytest.mark.skipif(bf16_path(cpu_flags()) is not None, reason="this CPU has a bf16 path")
def test_bf16_is_refused_on_a_cpu_without_avx512_bf16_or_amx(tiny_cross, bi_fp32):
    for model, artifact in ((crossrank.Reranker, tiny_cross), (crossrank.Embedder, bi_fp32)):
        with pytest.raises(DeviceUnavailableError) as caught:
            model(artifact, precision="bf16", allow_low_fidelity=True)
        message = str(caught.value)
        assert "\n" not in message and "needs AVX-512 BF16 or AMX" in message
        assert all(flag in message for flag in missing_bf16_flags(cpu_flags()))
    with pytest.raises(InvalidArgumentError, match="precision='bf16' runs on backend='openvino', not 'onnxruntime'"):
        crossrank.Reranker(tiny_cross, precision="bf16", backend="onnxruntime")


@pytest.fixture
def own_copy(tiny_cross, tmp_path):
    """A copy of the tiny artifact this test may write certificates into."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_cross, folder)
    return folder


def _record(artifact_folder, spearman=0.9995, invariance=0.0, path="amx", sha=None):
    artifact = crossrank.load_artifact(artifact_folder)
    return {"artifact_sha256": sha or artifact.sha256, "kind": "cross", "backend": "openvino", "precision": "bf16",
            "figures": {"spearman": spearman, "batch_invariance_max_abs_diff": invariance},
            "bar": {"metric": "spearman", "op": ">=", "value": 0.999}, "passed": spearman >= 0.999,
            "cpu": {"model": "test", "isa": sorted(AMX), "bf16_path": path}}


def test_bf16_needs_a_passing_certificate_for_this_graph_and_bf16_path(own_copy, monkeypatch):
    """The rules on a CPU flag set with AMX (OpenVINO ignores the bf16 hint on this CPU and runs
    f32: what is tested is which certificates are accepted, not bf16 numerics)."""
    monkeypatch.setattr("crossrank.model.cpu_flags", lambda: AMX)
    with pytest.raises(FidelityError, match=r"openvino-bf16 is refused .*no openvino-bf16 certificate.*crossrank "
                                            r"certify"):
        crossrank.Reranker(own_copy, precision="bf16")
    write_certificate(own_copy, _record(own_copy, sha="0" * 64))
    with pytest.raises(FidelityError, match="made for another graph"):
        crossrank.Reranker(own_copy, precision="bf16")
    write_certificate(own_copy, _record(own_copy, spearman=0.98))
    with pytest.raises(FidelityError, match=r"below the fidelity bar: spearman = 0.98 \(bar: >= 0.999\)"):
        crossrank.Reranker(own_copy, precision="bf16")
    write_certificate(own_copy, _record(own_copy, path="avx512_bf16"))
    with pytest.raises(FidelityError, match="bf16 path 'avx512_bf16', this CPU's is 'amx'"):
        crossrank.Reranker(own_copy, precision="bf16")
    low = crossrank.Reranker(own_copy, precision="bf16", allow_low_fidelity=True)
    assert low.describe()["runtime"]["fidelity"]["source"] == "uncertified"
    with pytest.raises(UsageError, match="shared=True is refused for openvino-bf16"):
        crossrank.Reranker(own_copy, precision="bf16", allow_low_fidelity=True, shared=True)
    write_certificate(own_copy, _record(own_copy))
    model = crossrank.Reranker(own_copy, precision="bf16")
    assert (model.backend, model.precision) == ("openvino", "bf16")
    if bf16_path(cpu_flags()) is None:  # OpenVINO itself says it computes in f32 on this CPU
        assert model.describe()["runtime"]["computes_in"] == "f32"
    assert model.describe()["runtime"]["fidelity"]["certificate"] == "openvino-bf16"
    crossrank.Reranker(own_copy, precision="bf16", shared=True).close()
    # with a passing certificate the ISA rule makes it the default (openvino is installed here)
    default = crossrank.Reranker(own_copy)
    assert (default.backend, default.precision) == ("openvino", "bf16")
    assert default.options.origin["precision"] == "default" and "AMX" in default.describe()["runtime"]["reason"]
    write_certificate(own_copy, _record(own_copy, invariance=3e-4))
    with pytest.raises(UsageError, match=r"alone answer within 1e-05 \(measured 0.0003\)"):
        crossrank.Reranker(own_copy, precision="bf16", shared=True)


def test_a_broken_certificates_file_is_a_clear_error(own_copy, monkeypatch):
    monkeypatch.setattr("crossrank.model.cpu_flags", lambda: AMX)
    (own_copy / CERTIFICATES_FILE).write_text("{not json")
    with pytest.raises(FidelityError, match="certificates.json: not readable JSON"):
        crossrank.Reranker(own_copy, precision="bf16")
    write_certificate(own_copy, _record(own_copy))  # crossrank replaces the broken file it owns
    assert set(read_certificates(own_copy)) == {"openvino-bf16"}


def test_certify_measures_against_pytorch_and_records_the_cpu(tiny_cross_src, seeded_cross_src, own_copy):
    from crossrank.export.certify import certify

    record, path = certify(own_copy, tiny_cross_src, "openvino", "fp32", threads=1)
    assert path == own_copy / CERTIFICATES_FILE and record["passed"]
    assert record["figures"]["max_abs_diff"] <= 1e-4 and record["figures"]["batch_invariance_max_abs_diff"] <= 1e-5
    assert record["cpu"]["isa"] == [f for f in record["cpu"]["isa"] if f in cpu_flags()]
    assert record["artifact_sha256"] == crossrank.load_artifact(own_copy).sha256 and record["versions"]["openvino"]
    described = crossrank.Reranker(own_copy, backend="openvino").describe()["runtime"]["fidelity"]
    assert described["certificate"] == "openvino-fp32" and described["figures"]["max_abs_diff"] <= 1e-4
    with pytest.raises(InvalidArgumentError, match="is not the checkpoint"):
        certify(own_copy, seeded_cross_src, "openvino", "fp32")  # another cross-encoder checkpoint
    if bf16_path(cpu_flags()) is None:
        with pytest.raises(DeviceUnavailableError, match="needs AVX-512 BF16 or AMX"):
            certify(own_copy, tiny_cross_src, "openvino", "bf16")


# -- runtime.json carries backend, precision and spinning ---------------------------------------------

def test_runtime_json_round_trips_backend_precision_and_spinning(own_copy):
    settings = {"threads": 1, "batch_tokens": 1024, "io_binding": False, "backend": "openvino", "precision": "fp32",
                "spinning": "never"}
    write_runtime(own_copy, "cpu", settings, {"pairs_per_s": 1.0})
    assert {k: v for k, v in read_runtime(own_copy)["cpu"].items() if k != "measured"} == settings
    model = crossrank.Reranker(own_copy)
    assert {k: model.options.values()[k] for k in settings} == settings
    assert all(model.options.origin[k] == RUNTIME_FILE for k in settings)
    assert crossrank.Reranker(own_copy, backend="onnxruntime").backend == "onnxruntime"  # arguments win
    (own_copy / RUNTIME_FILE).write_text(json.dumps({"format": 1, "cpu": {"backend": "tvm"}}))
    with pytest.raises(crossrank.RuntimeConfigError, match="'cpu.backend'"):
        crossrank.Reranker(own_copy)
