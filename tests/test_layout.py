"""The served layout (issue 26): scheduler workers x intra-op threads per worker for
``crossrank serve`` and Ray Serve's replicas, from the arguments, runtime.json ("serve", written
by ``crossrank tune --concurrency``) or the machine's rule. Pure functions and the tiny generated
cross-encoder; no speed is asserted (benchmarks/serve_bench.py measures the layouts)."""

from __future__ import annotations

import json
import shutil

import pytest

import crossrank
from crossrank.errors import InvalidArgumentError, RuntimeConfigError
from crossrank.front.cli import main
from crossrank.front.ray.config import RayConfig, deployment_options, replica_layout
from crossrank.front.serve.config import ServeConfig, serve_layout
from crossrank.front.tune import LayoutTrial, choose_layout, layout_grid
from crossrank.settings import (RUNTIME_FILE, ServeLayout, layout_rule, physical_cores, read_runtime,
                                runtime_layout, runtime_settings, write_runtime)

TUNED = {"workers": 3, "threads": 2, "concurrency": [1, 16], "measured": {"layouts": []}}


@pytest.fixture
def art(tiny_cross, tmp_path):
    """A private copy of the tiny artifact: tests write runtime.json into it."""
    return shutil.copytree(tiny_cross, tmp_path / "tiny")


def test_the_rule_is_one_worker_per_core_on_a_one_thread_session():
    assert [(r.workers, r.threads, r.origin) for r in map(layout_rule, (1, 2, 16, 64))] == \
        [(1, 1, "rule"), (2, 1, "rule"), (16, 1, "rule"), (64, 1, "rule")]
    assert (layout_rule(128).workers, layout_rule(128).threads) == (64, 2)  # past the workers' cap: split evenly
    assert (layout_rule(8, "cuda").workers, layout_rule(8, "cuda").threads) == (1, 8)
    assert layout_rule(2).text() == "2 workers x 1 thread (rule)"
    with pytest.raises(InvalidArgumentError, match="cores"):
        layout_rule(0)
    with pytest.raises(InvalidArgumentError, match="origin"):
        ServeLayout(1, 1, "guess")


def test_runtime_json_layout_round_trip_keeps_the_session_settings(art):
    assert runtime_layout(art, "cpu") is None
    path = write_runtime(art, "cpu", {"threads": 1, "batch_tokens": 512}, {"pairs_per_s": 1.0}, TUNED)
    assert json.loads(path.read_text())["cpu"]["serve"] == TUNED
    assert runtime_layout(art, "cpu") == ServeLayout(3, 2, RUNTIME_FILE)
    assert runtime_layout(art, "cuda") is None
    assert runtime_settings(art, "cpu") == {"threads": 1, "batch_tokens": 512}  # "serve" is not a session option
    assert crossrank.Reranker(art).options.threads == 1  # the in-process API keeps the section's threads
    write_runtime(art, "cpu", {"threads": 1})  # tune without a layout replaces the section: no stale layout
    assert runtime_layout(art, "cpu") is None


@pytest.mark.parametrize("serve, message", [
    ({"threads": 1}, "lacks the key 'cpu.serve.workers'"),
    ({"workers": 0, "threads": 1}, r"'cpu.serve.workers' must be an integer in \[1, 64\], got 0"),
    ({"workers": 2, "threads": "1"}, "'cpu.serve.threads' must be an integer"),
    ({"workers": 2, "threads": 1, "concurrency": [1, 0]}, r"'cpu.serve.concurrency' must be a non-empty list .* \[1, 0\]"),
    ({"workers": 2, "threads": 1, "concurrency": 16}, "'cpu.serve.concurrency' must be a non-empty list"),
    ({"workers": 2, "threads": 1, "stream": 2}, "unknown key 'cpu.serve.stream'"),
    ([2, 1], "'cpu.serve' must be an object"),
])
def test_a_bad_runtime_json_layout_names_the_value(art, serve, message):
    (art / RUNTIME_FILE).write_text(json.dumps({"format": 1, "cpu": {"serve": serve}}))
    with pytest.raises(RuntimeConfigError, match=message) as info:
        read_runtime(art)
    assert str(art / RUNTIME_FILE) in str(info.value)
    with pytest.raises(RuntimeConfigError, match=message):
        serve_layout(True, None, None, "cpu", art)


def test_serve_layout_origin_argument_then_runtime_json_then_rule(art):
    def layout(workers=None, threads=None, shared=True):
        found = serve_layout(shared, workers, threads, "cpu", art, cores=4)
        return found and (found.workers, found.threads, found.origin)

    assert layout() == (4, 1, "rule")
    write_runtime(art, "cpu", {}, None, TUNED)
    assert layout() == (3, 2, RUNTIME_FILE)
    assert layout(workers=2, threads=2) == (2, 2, "argument")
    assert layout(threads=2) == (2, 2, "argument")    # one given: the other fills the cores
    assert layout(workers=1) == (1, 4, "argument")
    assert layout(workers=8) == (8, 1, "argument")
    assert layout(shared=False) is None               # sharing off: each request runs its own batches
    config = ServeConfig(reranker=str(art))
    assert config.workers is None and config.layout(art) == ServeLayout(3, 2, RUNTIME_FILE)


def test_info_says_where_each_served_layout_came_from(art, tiny_cross):
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app

    write_runtime(art, "cpu", {}, None, TUNED | {"workers": 2, "threads": 1})
    for config, want in ((ServeConfig(reranker=[f"tuned={art}", f"plain={tiny_cross}"]),
                          {"tuned": {"workers": 2, "threads": 1, "origin": RUNTIME_FILE},
                           "plain": {"workers": physical_cores(), "threads": 1, "origin": "rule"}}),
                         (ServeConfig(reranker=f"tuned={art}", workers=1),
                          {"tuned": {"workers": 1, "threads": physical_cores(), "origin": "argument"}}),
                         (ServeConfig(reranker=f"tuned={art}", shared=False), {"tuned": None})):
        with TestClient(build_app(config)) as client:
            for _ in range(600):
                if client.get("/health").status_code == 200:
                    break
            models = client.get("/info").json()["models"]
            assert {name: models[name]["layout"] for name in want} == want
            if want["tuned"] is not None:
                assert models["tuned"]["workers"] == want["tuned"]["workers"]  # the scheduler runs it
            answer = client.post("/v1/rerank", json={"model": "tuned", "query": "q", "documents": ["a b", "c"]})
            assert answer.status_code == 200 and len(answer.json()["results"]) == 2


def test_ray_replicas_follow_the_served_layout(art):
    rule = replica_layout(ServeConfig(reranker=str(art)), RayConfig(), cores=4)
    assert (rule.replicas, rule.threads, rule.workers) == (4, 1, 1) and rule.origin == {"replicas": "rule",
                                                                                     "threads": "rule"}
    options = deployment_options(ServeConfig(reranker=str(art)), RayConfig(), cores=4)
    assert options["num_replicas"] == 4 and options["ray_actor_options"] == {"num_cpus": 1}
    write_runtime(art, "cpu", {}, None, TUNED)
    tuned = replica_layout(ServeConfig(reranker=str(art)), RayConfig(), cores=4)
    assert (tuned.replicas, tuned.threads, tuned.workers) == (3, 2, 1) and set(tuned.origin.values()) == {RUNTIME_FILE}
    assert deployment_options(ServeConfig(reranker=str(art)), RayConfig(), cores=4)["ray_actor_options"] == \
        {"num_cpus": 2}
    given = replica_layout(ServeConfig(reranker=str(art), threads=1, workers=2), RayConfig(replicas=5), cores=4)
    assert (given.replicas, given.threads, given.workers) == (5, 1, 2)
    assert given.origin == {"replicas": "argument", "threads": "argument"}
    capped = deployment_options(ServeConfig(reranker=str(art)), RayConfig(max_replicas=2), cores=4)
    assert capped["num_replicas"] == 2 and "autoscaling_config" not in capped
    scaled = deployment_options(ServeConfig(reranker=str(art)), RayConfig(max_replicas=8), cores=4)
    assert scaled["autoscaling_config"]["min_replicas"] == 3 and scaled["autoscaling_config"]["max_replicas"] == 8


def test_choose_layout_takes_the_best_mix_and_breaks_ties_on_the_lone_callers_p50():
    def trial(workers, threads, c1, c16, p50):
        return LayoutTrial(workers, threads, {1: [c1], 16: [c16]}, {1: [p50], 16: [p50 * 10]})

    wide, narrow = trial(1, 2, 40.0, 36.0, 500), trial(2, 1, 39.0, 51.0, 510)
    chosen, reason = choose_layout([wide, narrow], [1, 16])
    assert chosen is narrow and "at 16 callers" in reason
    assert choose_layout([wide, narrow], [1])[0] is wide
    close = trial(2, 1, 39.0, 36.5, 450)  # within noise of the best mix: the lower p50 alone wins
    assert choose_layout([wide, close], [1, 16])[0] is close
    assert layout_grid("cpu", 12) == [(12, 1), (6, 2), (4, 3), (3, 4), (2, 6), (1, 12)]
    assert layout_grid("cuda", 12) == [(1, 12)]


def test_tune_concurrency_writes_the_served_layout(capsys, art, tmp_path):
    workload = tmp_path / "workload.jsonl"
    workload.write_text("".join(json.dumps({"query": f"query {i}", "documents": [f"document {i} {j} " * (1 + j)
                                                                               for j in range(6)]}) + "\n"
                                for i in range(3)))
    rc = main(["tune", str(art), "--workload", str(workload), "--threads", "1", "--batch-tokens", "512",
               "--backends", "onnxruntime", "--spinning", "never", "--runs", "2", "--rounds", "0",
               "--repeat-baseline", "1", "--no-variants", "--quiet", "--concurrency", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "served layout:" in out and "c=3 pairs/s" in out
    serve = json.loads((art / RUNTIME_FILE).read_text())["cpu"]["serve"]
    grid = layout_grid("cpu")
    assert (serve["workers"], serve["threads"]) in grid and serve["concurrency"] == [3]
    assert [(m["workers"], m["threads"]) for m in serve["measured"]["layouts"]] == grid
    assert all(m["c3"]["pairs_per_s"] > 0 for m in serve["measured"]["layouts"])
    assert ServeConfig(reranker=str(art)).layout(art) == ServeLayout(serve["workers"], serve["threads"], RUNTIME_FILE)
    assert "crossrank serve runs it with" in out
