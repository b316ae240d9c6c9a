"""Export of the real MiniLM weights: fidelity, manifest, tokenizer, and the error paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from crossrank.artifact import ArtifactError, load_artifact, sha256_file
from crossrank.export import ExportError, SourceError, export_model
from crossrank.kernels.quantize import DEFAULT_INT8_RECIPE
from crossrank.session import build_session


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_bi_encoder_fp32_fidelity(bi_fp32):
    m = _manifest(bi_fp32)
    assert (m["kind"], m["precision"], m["dim"], m["pooling"], m["normalized"]) == ("bi", "fp32", 384, "mean", True)
    assert m["max_length"] == 256  # sentence-transformers' max_seq_length, not the tokenizer's 128
    fid = m["fidelity"]
    assert fid["texts"] >= 200
    assert fid["max_abs_diff"] <= 1e-4 and fid["passed"]
    assert fid["mean_cosine"] > 0.99999 and fid["top10_agreement"] == 1.0
    assert m["fusions"]["Attention"] == 6


def test_bi_encoder_int8_fidelity(bi_int8):
    m = _manifest(bi_int8)
    assert m["quantization"]["name"] == DEFAULT_INT8_RECIPE == "dynamic-perrow-u8s8-perchannel-rr"
    assert m["quantization"]["batch_invariant"] and m["fidelity"]["batch_invariance_max_abs_diff"] <= 1e-5
    assert m["fidelity"]["mean_cosine"] >= 0.995 and m["fidelity"]["passed"]


def test_ensure_artifact_re_exports_an_int8_artifact_of_another_recipe(bi_int8, minilm_path, tmp_path, monkeypatch):
    """A cached int8 artifact (e.g. the demo's, under artifacts/) exported with an older default
    recipe is exported again; one of the current default recipe is reused."""
    import crossrank.export as export

    cached = tmp_path / "embedder-int8"
    shutil.copytree(bi_int8, cached)
    exports = []
    monkeypatch.setattr(export, "export_model", lambda src, out, **kw: exports.append((Path(out), kw)))
    assert export.ensure_artifact(minilm_path, cached, "bi", "int8")[1] is True
    assert export.ensure_artifact(minilm_path, cached, "bi", "int8",
                                  int8_recipe="dynamic-pertensor-batchdependent-u8s8")[1] is False
    assert exports[-1] == (cached, {"kind": "bi", "precision": "int8", "force": True,
                                    "int8_recipe": "dynamic-pertensor-batchdependent-u8s8"})
    manifest = _manifest(cached)
    manifest["quantization"]["name"] = "dynamic-u8s8-perchannel-rr-ffn-fp32"  # the default before per-row scales
    (cached / "manifest.json").write_text(json.dumps(manifest))
    assert export.ensure_artifact(minilm_path, cached, "bi", "int8")[1] is False
    assert exports[-1] == (cached, {"kind": "bi", "precision": "int8", "force": True})


def test_int8_graph_is_smaller(bi_fp32, bi_int8):
    """Every projection's weights are int8 (a quarter of their fp32 size). The default recipe leaves
    the word-embedding table (a lookup, not a GEMM: 47 of MiniLM's 90 MB) in fp32, so the file as a
    whole shrinks less than it did under quantize_dynamic, which also quantized that table."""
    import onnx
    from onnx import numpy_helper

    def weight_bytes(artifact: Path) -> int:
        model = onnx.load(str(artifact / "model.onnx"))
        return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if "word_embeddings" not in t.name)

    assert (bi_int8 / "model.onnx").stat().st_size < 0.7 * (bi_fp32 / "model.onnx").stat().st_size
    assert weight_bytes(bi_int8) < 0.3 * weight_bytes(bi_fp32)


def test_cross_encoder_fp32_fidelity(cross_fp32):
    m = _manifest(cross_fp32)
    assert (m["kind"], m["activation"], m["max_length"], m["output"]) == ("cross", "sigmoid", 512, "logits")
    fid = m["fidelity"]
    assert fid["pairs"] >= 200 and fid["max_abs_diff"] <= 1e-4 and fid["passed"]


def test_cross_encoder_int8_figures_recorded(cross_int8_seeded):
    fid = _manifest(cross_int8_seeded)["fidelity"]
    # Seeded head: logits std ~0.014, so int8 noise of that size moves ranks. Recorded, not enforced.
    assert fid["reference_score_std"] < 0.05
    assert 0.9 < fid["spearman"] <= 1.0
    assert fid["bar"].startswith("spearman")


def test_artifact_files_match_manifest(bi_fp32, cross_fp32):
    for folder in (bi_fp32, cross_fp32):
        m = _manifest(folder)
        assert set(m["files"]) == {"model.onnx", "tokenizer.json"}
        for name, digest in m["files"].items():
            assert sha256_file(folder / name) == digest
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]


def test_tokenizer_does_not_inherit_128_token_limit(bi_fp32, cross_fp32, minilm_path):
    source = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    assert source.truncation is not None and source.truncation["max_length"] == 128  # the trap
    for folder in (bi_fp32, cross_fp32):
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert tokenizer.truncation is None and tokenizer.padding is None
        assert len(tokenizer.encode("word " * 600).ids) > 512


def test_graph_outputs(bi_fp32, cross_fp32):
    tokenizer = Tokenizer.from_file(str(bi_fp32 / "tokenizer.json"))
    tokenizer.enable_padding()
    encs = tokenizer.encode_batch(["a cat sat on the mat", "reranking with cross-encoders"])
    feeds = {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
    }
    emb = build_session(bi_fp32 / "model.onnx").run(None, feeds)
    assert emb[0].shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb[0], axis=1), 1.0, atol=1e-5)
    session = build_session(cross_fp32 / "model.onnx")
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.run(None, feeds)[0].shape == (2,)


def test_tampered_artifact_is_refused(bi_fp32, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bi_fp32, copy)
    with open(copy / "tokenizer.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError, match="tokenizer.json.*does not match"):
        load_artifact(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match="expected"):
        load_artifact(bi_fp32, expect_kind="cross")


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="does-not-exist"):
        export_model(tmp_path / "does-not-exist", tmp_path / "out", kind="cross")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no config.json"):
        export_model(tmp_path / "empty", tmp_path / "out", kind="bi")


def test_unsupported_architecture(tmp_path, minilm_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SourceError, match="GPT2LMHeadModel.*not supported"):
        export_model(folder, tmp_path / "out", kind="cross")
    with pytest.raises(SourceError, match="'gpt2' is not supported"):
        export_model(folder, tmp_path / "out", kind="bi")
    # A bare encoder is not a cross-encoder either.
    with pytest.raises(SourceError, match="BertModel"):
        export_model(minilm_path, tmp_path / "out", kind="cross")


def test_existing_output_needs_force(tmp_path, minilm_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        export_model(minilm_path, tmp_path / "out", kind="bi")


def test_bad_options(tmp_path, minilm_path):
    with pytest.raises(ValueError, match="'int4'"):
        export_model(minilm_path, tmp_path / "out", kind="bi", precision="int4")
    with pytest.raises(ValueError, match="needs --precision int8"):
        export_model(minilm_path, tmp_path / "out", kind="bi", int8_recipe=DEFAULT_INT8_RECIPE)
    with pytest.raises(ValueError, match="--max-length 4096"):
        export_model(minilm_path, tmp_path / "out", kind="bi", max_length=4096)


def test_low_fidelity_fails_and_leaves_nothing(tmp_path, minilm_path, monkeypatch):
    from crossrank.export import fidelity

    def flat_figures(*args, **kwargs):
        return {"max_abs_diff": 0.5, "mean_cosine": 0.9, "texts": 240}

    monkeypatch.setattr(fidelity, "measure_fidelity", flat_figures)
    with pytest.raises(ExportError, match=r"max_abs_diff = 0.5 .*--allow-low-fidelity"):
        export_model(minilm_path, tmp_path / "out", kind="bi", quiet=True)
    assert list(tmp_path.iterdir()) == []  # no artifact, no partial folder


def test_interrupted_export_leaves_nothing(tmp_path, minilm_path, monkeypatch):
    import crossrank.export as export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(minilm_path, tmp_path / "out", kind="bi", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_cli_help_and_errors(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "crossrank", *args], capture_output=True, text=True)
    helped = run("--help")
    assert helped.returncode == 0 and "export" in helped.stdout and "info" in helped.stdout
    assert "--precision" in run("export", "--help").stdout
    failed = run("export", str(tmp_path / "nope"), str(tmp_path / "out"), "--kind", "cross")
    assert failed.returncode == 2 and "nope" in failed.stderr and "does not exist" in failed.stderr


def test_import_crossrank_stays_lean():
    code = ("import sys, crossrank, crossrank.front.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'optimum', 'onnx', 'crossrank.export') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
