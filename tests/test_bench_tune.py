"""`crossrank bench` / `crossrank tune` and runtime.json: argument errors, validation, small real runs.

Everything runs on the tiny generated cross-encoder (and a tiny bi-encoder), so a sweep takes
seconds; the figures themselves are not checked, only that they are produced and used.
"""

from __future__ import annotations

import json
import shutil

import pytest

import crossrank
from crossrank.artifact import load_artifact
from crossrank.errors import RuntimeConfigError
from crossrank.front.cli import main
from crossrank.front.tune import Trial, choose
from crossrank.session import cuda_available
from crossrank.settings import RUNTIME_FILE, read_runtime, runtime_settings, write_runtime

WORKLOAD = [
    {"query": f"question {i} about retrieval",
     "documents": [f"passage {i}.{j}: " + "retrieval reranking words " * (1 + (i + j) % 9) for j in range(6)]}
    for i in range(4)
]


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli(*argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def failure(capsys, *argv) -> str:
    assert cli(*argv) == 2
    return capsys.readouterr().err


@pytest.fixture
def art(tiny_cross, tmp_path):
    """A private copy of the tiny artifact: tests write runtime.json into it."""
    return shutil.copytree(tiny_cross, tmp_path / "tiny")


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "workload.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in WORKLOAD))
    return path


@pytest.fixture(scope="module")
def tiny_bi(minilm_path, tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    from crossrank.export import export_model
    from crossrank.export.seeded import TOKENIZER_FILES

    src = tmp_path_factory.mktemp("tiny-bi") / "src"
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(src)
    for name in TOKENIZER_FILES:
        if (minilm_path / name).is_file():
            shutil.copy2(minilm_path / name, src / name)
    out = tmp_path_factory.mktemp("tiny-bi") / "artifact"
    export_model(src, out, kind="bi", precision="fp32", quiet=True)
    return out


# -- runtime.json ---------------------------------------------------------------------------

def write(art, content) -> None:
    (art / RUNTIME_FILE).write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ([1, 2], "expected a JSON object"),
    ({"cpu": {"threads": 1}}, "lacks the key 'format'"),
    ({"format": 7, "cpu": {}}, "'format' = 7"),
    ({"format": 1, "gpu": {}}, "unknown key 'gpu'"),
    ({"format": 1, "cpu": {"thread": 2}}, "unknown key 'cpu.thread'"),
    ({"format": 1, "cpu": []}, "'cpu' must be an object"),
    ({"format": 1, "cpu": {"threads": "2"}}, "'cpu.threads' must be an integer"),
    ({"format": 1, "cpu": {"threads": True}}, "'cpu.threads' must be an integer"),
    ({"format": 1, "cpu": {"threads": 2.5}}, "'cpu.threads' must be an integer"),
        ({"format": 1, "cpu": {"threads": 0}}, r"'cpu.threads' must be an integer in \[1, 1024\], got 0"),
        ({"format": 1, "cpu": {"batch_tokens": 0}}, r"'cpu.batch_tokens' must be an integer in \[16, 4194304\], got 0"),
        ({"format": 1, "cuda": {"batch_tokens": 1 << 30}}, "'cuda.batch_tokens' must be .* got 1073741824"),
        ({"format": 1, "cpu": {"io_binding": "yes"}}, "'cpu.io_binding' must be True or False"),
    ({"format": 1, "cpu": {"measured": 3}}, "'cpu.measured' must be an object"),
])
def test_malformed_runtime_json_is_a_clear_error(art, content, message):
    write(art, content)
    with pytest.raises(RuntimeConfigError, match=message) as info:
        read_runtime(art)
    assert str(art / RUNTIME_FILE) in str(info.value)
    with pytest.raises(RuntimeConfigError, match=message):  # Reranker refuses it too
        crossrank.Reranker(art)


def test_reranker_uses_runtime_json_and_explicit_arguments_win(art):
    def settings(reranker):
        runner = reranker.runner
        return runner.session.get_session_options().intra_op_num_threads, runner.batch_tokens, runner.io_binding

    default = settings(crossrank.Reranker(art))
    write(art, {"format": 1, "cpu": {"threads": 1, "batch_tokens": 1024, "io_binding": True},
                "cuda": {"threads": 3, "batch_tokens": 99999}})
    assert settings(crossrank.Reranker(art)) == (1, 1024, True)
    assert settings(crossrank.Reranker(art, threads=2, batch_tokens=4096, io_binding=False)) == (2, 4096, False)
    assert settings(crossrank.Reranker(art, batch_tokens=512)) == (1, 512, True)
    write(art, {"format": 1, "cuda": {"threads": 3}})  # another device's section does not apply
    assert settings(crossrank.Reranker(art)) == default
    reranker = crossrank.Reranker(art)
    assert len(reranker.rerank("q", ["a", "b"])) == 2


def test_write_runtime_keeps_other_devices_and_the_manifest(art):
    manifest = (art / "manifest.json").read_bytes()
    write(art, {"format": 1, "cuda": {"batch_tokens": 65536, "io_binding": True}})
    path = write_runtime(art, "cpu", {"threads": 1, "batch_tokens": 2048, "io_binding": False}, {"pairs_per_s": 1.0})
    assert path == art / RUNTIME_FILE
    document = json.loads(path.read_text())
    assert document["cuda"] == {"batch_tokens": 65536, "io_binding": True}
    assert document["cpu"]["threads"] == 1 and document["cpu"]["measured"] == {"pairs_per_s": 1.0}
    assert runtime_settings(art, "cpu") == {"threads": 1, "batch_tokens": 2048, "io_binding": False}
    assert sorted(p.name for p in art.iterdir()) == ["manifest.json", "model.onnx", RUNTIME_FILE, "tokenizer.json"]
    assert (art / "manifest.json").read_bytes() == manifest
    load_artifact(art)  # every listed file still verifies; runtime.json is not listed
    with pytest.raises(RuntimeConfigError, match=r"must be an integer in \[1, 1024\], got 0"):
        write_runtime(art, "cpu", {"threads": 0})
    assert runtime_settings(art, "cpu")["threads"] == 1  # a refused write leaves the file as it was


def test_choose_respects_the_budget_and_noise():
    def trial(threads, budget, rate, p95):
        return Trial(threads, budget, False, pairs_per_s=rate, p50_ms=p95 / 2, p95_ms=p95)

    trials = [trial(1, 1024, 10.0, 900), trial(2, 1024, 20.0, 500), trial(2, 8192, 20.3, 700),
              trial(2, 4096, 30.0, 1500)]
    chosen, reason = choose(trials, None)
    assert chosen is trials[3] and "no latency budget" in reason
    chosen, reason = choose(trials, 1000)
    assert chosen is trials[1]  # 8192 is faster by 1.5%: noise, so the lower p95 wins
    assert "1 over budget" in reason and "lowest p95" in reason
    chosen, reason = choose(trials, 100)
    assert chosen is None and "lowest p95 was 500 ms" in reason
    trials[1].final, trials[2].final = [19.0, 18.0, 25.0], [22.0, 21.0, 20.0]  # the final round decides
    chosen, reason = choose(trials, 1000)
    assert chosen is trials[2] and chosen.rate == 21.0 and "median of 3 final rounds" in reason
    baseline = trial(2, 2048, 50.0, 100)
    baseline.candidate = False  # measured outside the grid: never chosen
    assert choose([trials[0], trials[3], baseline], None)[0] is trials[3]


# -- argument errors ------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ((), "the following arguments are required: ART"),
    (("ART", "--workload", "w.jsonl", "--bundled"), "not allowed with argument"),
    (("ART", "--sizes", "0"), "--sizes: expected comma-separated positive integers"),
    (("ART", "--sizes", "twenty"), "--sizes: expected comma-separated positive integers"),
    (("ART", "--queries", "-1"), "--queries: expected an integer >= 0"),
    (("ART", "--runs", "0"), "--runs: expected a positive integer"),
    (("ART", "--encoder-shape", "6,384"), "--encoder-shape: expected LAYERS,HIDDEN,INTERMEDIATE"),
    # budgets are batch_tokens values: settings.BATCH_TOKENS_RANGE (issue 19)
    (("ART", "--budgets", "1024,x"), "--budgets: expected comma-separated integers in [16, 4194304]"),
    (("ART", "--vs", "flashrank"), "invalid choice: 'flashrank'"),
    (("ART", "--device", "tpu"), "invalid choice: 'tpu'"),
])
def test_bench_usage_errors(capsys, argv, message):
    assert message in usage_error(capsys, "bench", *argv)


@pytest.mark.parametrize("argv, message", [
    ((), "the following arguments are required: ART"),
    (("ART", "--latency-budget-ms", "0"), "--latency-budget-ms: expected a positive finite number"),
    (("ART", "--latency-budget-ms", "-5"), "--latency-budget-ms: expected a positive finite number"),
    (("ART", "--latency-budget-ms", "fast"), "--latency-budget-ms: expected a number of milliseconds"),
    # the ranges of --threads and --batch-tokens are settings.THREADS_RANGE / BATCH_TOKENS_RANGE (issue 19)
    (("ART", "--threads", "0"), "--threads: expected comma-separated integers in [1, 1024]"),
    (("ART", "--batch-tokens", "2k"), "--batch-tokens: expected comma-separated integers in [16, 4194304]"),
    (("ART", "--batch-tokens", "8"), "--batch-tokens: expected comma-separated integers in [16, 4194304]"),
    (("ART", "--runs", "0"), "--runs: expected a positive integer"),
    (("ART", "--rounds", "-1"), "--rounds: expected an integer >= 0"),
    (("ART", "--backends", "tvm"), "--backends: expected comma-separated backends of onnxruntime, openvino"),
    (("ART", "--spinning", "sometimes"), "--spinning: expected comma-separated spinning modes of"),
    (("ART", "--max-spread", "0"), "--max-spread: expected a positive finite number"),
])
def test_tune_usage_errors(capsys, argv, message):
    assert message in usage_error(capsys, "tune", *argv)


def test_bench_errors_before_measuring(capsys, art, workload, tmp_path):
    assert "does not exist" in failure(capsys, "bench", tmp_path / "nowhere")
    assert "workload file" in failure(capsys, "bench", art, "--workload", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(WORKLOAD[0]) + "\n" + '{"query": "q", "documents": "not a list"}\n')
    assert f"{bad}:2:" in failure(capsys, "bench", art, "--workload", bad)
    bad.write_text('{"query": "q"\n')
    assert f"{bad}:1: not valid JSON" in failure(capsys, "bench", art, "--workload", bad)
    assert "not a Hugging Face model folder" in failure(capsys, "bench", art, "--source", tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"]["name"] = "cross-encoder/ms-marco-MiniLM-L-6-v2"  # a hub id, not a folder here
    (art / "manifest.json").write_text(json.dumps(manifest))
    err = failure(capsys, "bench", art, "--vs", "sentence-transformers", "--workload", workload)
    assert "pass --source DIR" in err
    (tmp_path / "report-file").write_text("")
    assert "is not a folder" in failure(capsys, "bench", art, "--report", tmp_path / "report-file")


def test_tune_errors_before_measuring(capsys, art, tmp_path):
    assert "does not exist" in failure(capsys, "tune", tmp_path / "nowhere")
    write(art, {"format": 1, "cpu": {"threads": -1}})
    err = failure(capsys, "tune", art)
    assert str(art / RUNTIME_FILE) in err and "'cpu.threads' must be an integer in [1, 1024], got -1" in err and "fix or delete" in err
    (art / RUNTIME_FILE).unlink()
    assert "physical cores" in failure(capsys, "tune", art, "--threads", "1000")  # in THREADS_RANGE, past the cores
    if not cuda_available():
        assert "onnxruntime-gpu" in failure(capsys, "tune", art, "--device", "cuda")


def test_tune_refuses_an_embedder(capsys, tiny_bi):
    assert "tunes rerankers" in failure(capsys, "tune", tiny_bi)


# -- small real runs ------------------------------------------------------------------------

def test_tune_writes_runtime_json_that_reranker_uses(capsys, art, workload):
    manifest = (art / "manifest.json").read_bytes()
    rc = cli("tune", art, "--workload", workload, "--threads", "1", "--batch-tokens", "256,512",
             "--backends", "onnxruntime", "--spinning", "never", "--runs", "2", "--rounds", "0", "--quiet",
             "--allow-noisy")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "CHOSEN" in out and "baseline only" in out and "highest throughput" in out and "one sample" in out
    assert "noise check: the defaults measured 3 times across the sweep" in out
    document = json.loads((art / RUNTIME_FILE).read_text())
    section = document["cpu"]
    assert section["threads"] == 1 and section["batch_tokens"] in (256, 512) and section["io_binding"] is False
    assert (section["backend"], section["precision"], section["spinning"]) == ("onnxruntime", "fp32", "never")
    assert section["measured"]["model_sha256"] == load_artifact(art).sha256
    assert len(section["measured"]["baseline_pairs_per_s"]) == 3 and section["measured"]["baseline_spread"] >= 0
    assert (art / "manifest.json").read_bytes() == manifest
    reranker = crossrank.Reranker(art)
    assert reranker.runner.batch_tokens == section["batch_tokens"] and reranker.options.spinning == "never"
    assert reranker.runner.session.get_session_options().intra_op_num_threads == 1


def test_tune_sweeps_backends_and_round_trips_them_through_runtime_json(capsys, art, workload):
    pytest.importorskip("openvino")
    rc = cli("tune", art, "--workload", workload, "--threads", "1", "--batch-tokens", "512", "--runs", "2",
             "--rounds", "0", "--quiet", "--allow-noisy", "--no-variants", "--repeat-baseline", "2")
    out = capsys.readouterr().out
    assert rc == 0, out
    for row in ("onnxruntime      fp32       1          512 within-calls", "onnxruntime      fp32       1          "
                "512        never", "openvino      fp32       1          512            -"):
        assert row in out, out
    section = json.loads((art / RUNTIME_FILE).read_text())["cpu"]
    chosen = {k: section[k] for k in ("backend", "precision", "spinning", "threads", "batch_tokens")}
    reranker = crossrank.Reranker(art)
    assert {k: reranker.options.values()[k] for k in chosen} == chosen
    assert reranker.options.origin["backend"] == RUNTIME_FILE and reranker.backend == section["backend"]


def test_tune_refuses_to_write_when_the_machine_is_too_noisy(capsys, art, workload):
    args = ("tune", art, "--workload", workload, "--threads", "1", "--batch-tokens", "512", "--backends",
            "onnxruntime", "--spinning", "never", "--runs", "2", "--rounds", "0", "--no-variants", "--quiet")
    rc = cli(*args, "--max-spread", "1e-12")  # any two timings differ more than that
    captured = capsys.readouterr()
    assert rc == 1 and "TOO NOISY TO MEASURE" in captured.err and "runtime.json not written" in captured.err
    assert "noise check: the defaults measured 3 times" in captured.out and "spread" in captured.out
    assert not (art / RUNTIME_FILE).exists()
    assert cli(*args, "--max-spread", "1e-12", "--allow-noisy") == 0
    assert "--allow-noisy: writing anyway" in capsys.readouterr().err
    assert json.loads((art / RUNTIME_FILE).read_text())["cpu"]["measured"]["baseline_spread"] > 1e-12


def test_tune_with_an_impossible_budget_writes_nothing(capsys, art, workload):
    rc = cli("tune", art, "--workload", workload, "--threads", "1", "--batch-tokens", "512", "--backends",
             "onnxruntime", "--runs", "2", "--latency-budget-ms", "0.0001", "--quiet", "--no-variants", "--allow-noisy")
    captured = capsys.readouterr()
    assert rc == 1
    assert "no setting meets the 0.0001 ms p95 budget" in captured.out
    assert "runtime.json not written" in captured.err
    assert not (art / RUNTIME_FILE).exists()


def test_tune_confirms_the_gain_and_dry_run_writes_nothing(capsys, art, workload):
    rc = cli("tune", art, "--workload", workload, "--threads", "1", "--batch-tokens", "256", "--backends",
             "onnxruntime", "--spinning", "never", "--runs", "2", "--dry-run", "--quiet")
    out = capsys.readouterr().out
    assert rc == 0
    assert "gain over the defaults" in out and "final round" in out and "--dry-run" in out
    assert not (art / RUNTIME_FILE).exists()


def test_bench_report_for_a_reranker(capsys, art, workload, tmp_path):
    report = tmp_path / "report"
    rc = cli("bench", art, "--workload", workload, "--sizes", "1,5", "--runs", "2", "--budgets", "256,1024",
             "--report", report, "--quiet")
    out = capsys.readouterr().out
    assert rc == 0
    assert "pairs/s" in out and "padding" in out and "GFLOP/s" in out and "cold start" in out
    data = json.loads((report / "report.json").read_text())
    assert data["unit"] == "pairs" and data["items"] == 24 and data["throughput"]["items_per_s"] > 0
    assert [row["label"] for row in data["latency"]] == ["1 x 1", "1 x 5"]
    assert data["encoder_shape"] == {"layers": 2, "hidden": 32, "intermediate": 64}
    assert data["useful_gflops"] > 0 and data["peak_rss_mb"] > 0 and data["cold_start_s"] > 0
    assert [p["batch_tokens"] for p in data["budgets"]] == [256, 1024]
    for name in ("report.md", "throughput_vs_budget.png", "latency_vs_documents.png"):
        assert (report / name).stat().st_size > 0
    assert "![latency_vs_documents.png]" in (report / "report.md").read_text()


def test_bench_own_requests_and_explicit_encoder_shape(capsys, art, workload):
    rc = cli("bench", art, "--workload", workload, "--encoder-shape", "2,32,64", "--threads", "1", "--quiet")
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 x 6 (own)" in out and "from --encoder-shape" in out and "threads 1 (argument)" in out


def test_bench_an_embedder(capsys, tiny_bi, workload):
    rc = cli("bench", tiny_bi, "--workload", workload, "--sizes", "1,4", "--runs", "2", "--quiet")
    out = capsys.readouterr().out
    assert rc == 0
    assert "texts/s" in out and "1 x 4" in out


def test_bench_vs_sentence_transformers(capsys, art, workload):
    pytest.importorskip("sentence_transformers")
    rc = cli("bench", art, "--workload", workload, "--sizes", "5", "--runs", "2", "--vs", "sentence-transformers",
             "--quiet")
    out = capsys.readouterr().out
    assert rc == 0
    assert "vs sentence-transformers CrossEncoder" in out and "x faster" in out
