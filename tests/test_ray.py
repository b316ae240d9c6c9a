"""crossrank on Ray (extra ``ray``), on a local Ray cluster on the loopback interface
(``ray.init(num_cpus=2)``, no dashboard).

Online: the Serve application of ``deploy/ray-serve.yaml`` (its reranker path replaced by the
starter reranker's fp32 export), 2 replicas x 1 thread, spoken to through Serve's HTTP proxy on
127.0.0.1 by the real cohere SDK, must answer exactly what the single-process ``crossrank serve``
answers (fp32 is batch-invariant); killing one replica's actor under load loses no request that
the client retries, and ``/health`` reports the deployment degraded until Serve has replaced it.

Offline: ``score_dataset`` on 5,000 real TREC RAG pairs (2 actors x 1 thread, 5 blocks) must equal
the in-process ``Reranker.score`` on the same pairs bit for bit, keep every id once, and a re-run
must skip the blocks already written. The window is 64 tokens (``max_length``) so that the
5,000 pairs score in about half a minute on 2 cores; scores depend on the pair and the model only,
whatever the window, so exactness at 64 tokens tests the same property as at 512.

The whole file is skipped, with the reason, only when Ray cannot start on the machine.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'crossrank[ray]')")
serve = pytest.importorskip("ray.serve", reason="the 'ray' extra is not installed (pip install 'crossrank[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'crossrank[ray]')")
import pyarrow as pa
import yaml
from test_serve import Server, cohere, free_port, httpx, local_only_environment  # noqa: F401 (fixture)

import crossrank
from crossrank.errors import InvalidArgumentError, OutputExistsError
from crossrank.front.cli import main
from crossrank.front.ray.data import JOB_FILE, score_dataset
from crossrank.front.ray.config import RayConfig, deployment_options  # the ray wing's (issue 19: was serve.config)
from crossrank.front.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
SERVE_YAML = ROOT / "deploy" / "ray-serve.yaml"
SCORE_MAX_LENGTH = 64
SCORE_PAIRS = 5000
BLOCK_ROWS = 1000
HEALTH_SECONDS = 120
LOAD_CLIENTS, LOAD_REQUESTS, LOAD_DOCUMENTS = 4, 4, 8


@pytest.fixture(scope="module")
def ray_cluster(local_only_environment):  # noqa: F811
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 (any failure to start is the reason to skip)
        pytest.skip(f"Ray cannot start on this machine: {type(err).__name__}: {err}")
    yield
    ray.shutdown()


# -- online: Ray Serve ---------------------------------------------------------------------------

def yaml_application(**overrides):
    """The application of deploy/ray-serve.yaml, built the way ``serve run`` builds it: its
    import_path called with its args (some replaced)."""
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema(**yaml.safe_load(SERVE_YAML.read_text()))
    (spec,) = schema.applications
    module, _, name = spec.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[name]), name)
    return spec, builder({**spec.args, **overrides})


@pytest.fixture(scope="class")
def single_server(starter_fp32, tmp_path_factory):
    """The single-process ``crossrank serve`` on the same artifact, the reference."""
    process = Server(["--reranker", f"starter={starter_fp32}", "--threads", "1"],
                     tmp_path_factory.mktemp("ray-single") / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="class")
def deployed(ray_cluster, starter_fp32):
    """deploy/ray-serve.yaml's application, 2 replicas x 1 thread, on a free loopback port (shut
    down after the Serve tests: the Ray Data tests then have the cluster's 2 CPUs)."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec, app = yaml_application(reranker=f"starter={starter_fp32}", threads=1, replicas=2, health_check_period_s=1)
    serve.run(app, name=spec.name, route_prefix=spec.route_prefix)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def busy_replica(names: list[str], seconds: float = 60) -> tuple[str, object]:
    """The first of the named Serve replicas seen with a request in flight (Serve's own count), so
    that killing it surely cuts a request: an idle victim would leave nothing to retry."""
    actors = {name: ray.get_actor(name, namespace="serve") for name in names}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, actor in actors.items():
            if ray.get(actor.get_num_ongoing_requests.remote(), timeout=30) > 0:
                return name, actor
        time.sleep(0.005)
    raise AssertionError(f"no replica of {names} had a request in flight for {seconds} s")


class TestServe:
    def test_the_yaml_lays_out_replicas_from_the_serve_settings(self, starter_fp32):
        spec, _ = yaml_application(reranker=str(starter_fp32))
        config = ServeConfig(**{k: v for k, v in spec.args.items() if k in ServeConfig.__dataclass_fields__})
        options = deployment_options(config, RayConfig(replicas=spec.args["replicas"]))
        assert options["ray_actor_options"] == {"num_cpus": spec.args["threads"]}
        assert options["num_replicas"] == 2 and options["max_ongoing_requests"] == (1 << 20) // 25000
        scaled = deployment_options(ServeConfig(device="cuda"), RayConfig(replicas=1, max_replicas=4))
        assert scaled["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1} and "num_replicas" not in scaled
        assert scaled["autoscaling_config"]["min_replicas"] == 1 and scaled["autoscaling_config"]["max_replicas"] == 4
        with pytest.raises(InvalidArgumentError, match="unknown crossrank application args.*'replica'"):
            yaml_application(reranker="x", replica=2)
        with pytest.raises(InvalidArgumentError, match="max_replicas must be at least replicas"):
            RayConfig(replicas=3, max_replicas=2)

    def test_cohere_through_serve_gets_what_the_single_process_server_returns(self, deployed, single_server,
                                                                             trec_rag, starter_fp32):
        via_ray = cohere.ClientV2(api_key="dummy", base_url=deployed)
        single = cohere.ClientV2(api_key="dummy", base_url=single_server.url)
        for row, top_n in ((trec_rag[0], None), (trec_rag[1], 5), (trec_rag[2], 1)):
            got = via_ray.rerank(model="starter", query=row["query"], documents=row["documents"], top_n=top_n)
            want = single.rerank(model="starter", query=row["query"], documents=row["documents"], top_n=top_n)
            assert [(r.index, r.relevance_score) for r in got.results] == \
                   [(r.index, r.relevance_score) for r in want.results]
            assert got.meta == want.meta
        # the raw bodies too, other shapes: equal but for the random response id
        body = {"query": trec_rag[3]["query"], "documents": trec_rag[3]["documents"][:6], "return_documents": True}
        got, want = (httpx.post(url + "/v1/rerank", json=body, timeout=120).json()
                     for url in (deployed, single_server.url))
        assert {**got, "id": None} == {**want, "id": None}
        info = httpx.get(deployed + "/info", timeout=30).json()
        assert info["models"]["starter"]["settings"]["threads"] == 1  # = the CPUs the replica reserved
        assert info["models"]["starter"]["shared"] is True

    def test_a_killed_replica_loses_no_retried_request_and_health_reports_it(self, deployed, single_server,
                                                                            trec_rag, starter_fp32):
        requests = [(row["query"], row["documents"][:LOAD_DOCUMENTS]) for row in trec_rag[10:10 + LOAD_REQUESTS * 2]]
        single = cohere.ClientV2(api_key="dummy", base_url=single_server.url)
        want = [[(r.index, r.relevance_score) for r in single.rerank(model="starter", query=q, documents=d).results]
                for q, d in requests]
        health = httpx.get(deployed + "/health", timeout=30).json()
        assert health["status"] == "ok" and health["deployment"]["replicas"] == {"RUNNING": 2}, health
        replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith("SERVE_REPLICA::")]
        assert len(replicas) == 2, replicas

        statuses, results, errors, answered = [], {}, [], threading.Semaphore(0)
        lock = threading.Lock()

        def client(c: int) -> None:
            hooks = {"response": [lambda response: statuses.append(response.status_code)]}
            co = cohere.ClientV2(api_key="dummy", base_url=deployed,
                                 httpx_client=httpx.Client(timeout=120, event_hooks=hooks))
            for k in range(LOAD_REQUESTS):
                n = (c * LOAD_REQUESTS + k) % len(requests)
                try:
                    response = co.rerank(model="starter", query=requests[n][0], documents=requests[n][1],
                                         request_options={"max_retries": 8})
                    with lock:
                        results[(c, k)] = (n, [(r.index, r.relevance_score) for r in response.results])
                except Exception as err:  # noqa: BLE001 (recorded, then asserted empty)
                    errors.append(f"client {c} request {k}: {type(err).__name__}: {err}")
                answered.release()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(LOAD_CLIENTS)]
        for t in threads:
            t.start()
        assert answered.acquire(timeout=300)  # under load: one answer back, the others in flight
        victim, actor = busy_replica(replicas)
        ray.kill(actor, no_restart=True)
        killed_id = victim.rpartition("#")[2]

        seen, deadline = [], time.monotonic() + HEALTH_SECONDS
        while time.monotonic() < deadline:
            answer = httpx.get(deployed + "/health", timeout=30).json()
            seen.append(answer)
            if any(s["status"] == "degraded" for s in seen) and answer["status"] == "ok" \
                    and answer["deployment"]["replicas"] == {"RUNNING": 2}:
                break
            time.sleep(0.1)
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert len(results) == LOAD_CLIENTS * LOAD_REQUESTS
        for n, ranked in results.values():
            assert ranked == want[n]
        # the victim had requests in flight: the proxy answered them 5xx, and the client's retries got answers
        assert any(s >= 500 for s in statuses), statuses
        degraded = [s for s in seen if s["status"] == "degraded"]
        assert degraded, f"/health never reported the killed replica: {seen[:3]} ... {seen[-3:]}"
        assert any(s["deployment"]["replicas"].get("RUNNING", 0) < 2 for s in degraded), degraded[:3]
        final = seen[-1]
        assert final["status"] == "ok" and final["deployment"]["replicas"] == {"RUNNING": 2}, final
        names = {a["name"].rpartition("#")[2] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("SERVE_REPLICA::")}
        assert killed_id not in names and len(names) == 2, names  # Serve replaced it with a new replica


# -- offline: Ray Data --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trec_pairs(trec_rag):
    """5,000 (id, query, document) TREC RAG pairs; ids are strings that are not row numbers."""
    pairs = [(f"q{qi}-p{pi}", row["query"], doc) for qi, row in enumerate(trec_rag)
             for pi, doc in enumerate(row["documents"])]
    return pairs[:SCORE_PAIRS]


@pytest.fixture(scope="module")
def reference_scores(starter_fp32, trec_pairs):
    reranker = crossrank.Reranker(starter_fp32, max_length=SCORE_MAX_LENGTH)
    return reranker.score([(q, d) for _, q, d in trec_pairs])


def write_jsonl(path: Path, pairs) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for pid, query, document in pairs:
            handle.write(json.dumps({"id": pid, "query": query, "document": document}) + "\n")
    return path


def read_scores(output: Path) -> pa.Table:
    return pq.read_table(output).sort_by("row")


def test_score_dataset_equals_reranker_score_and_resumes(ray_cluster, starter_fp32, trec_pairs, reference_scores,
                                                         tmp_path):
    source = write_jsonl(tmp_path / "pairs.jsonl", trec_pairs)
    output = tmp_path / "scores"
    report = score_dataset(starter_fp32, source, output, concurrency=2, threads=1, block_rows=BLOCK_ROWS,
                           max_length=SCORE_MAX_LENGTH, progress=False)
    assert (report.rows, report.blocks, report.skipped_blocks, report.written_blocks, report.scored_rows) == \
           (SCORE_PAIRS, 5, 0, 5, SCORE_PAIRS)
    table = read_scores(output)
    assert table.num_rows == SCORE_PAIRS
    assert table.column("row").to_pylist() == list(range(SCORE_PAIRS))  # nothing dropped, nothing twice
    assert table.column("id").to_pylist() == [pid for pid, _, _ in trec_pairs]
    scores = table.column("score").to_numpy()
    assert scores.dtype == np.float32 and np.array_equal(scores, reference_scores)  # fp32: bit for bit
    parts = sorted(output.glob("part-*.parquet"))
    assert len(parts) == 5 and not list(output.glob(".*"))  # no temporary file left
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}

    again = score_dataset(starter_fp32, source, output, concurrency=2, threads=1, block_rows=BLOCK_ROWS,
                          max_length=SCORE_MAX_LENGTH, progress=False)
    assert (again.skipped_blocks, again.written_blocks, again.scored_rows) == (5, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")} == stamps

    parts[2].unlink()  # as if the job had stopped before writing block 2
    resumed = score_dataset(starter_fp32, source, output, concurrency=2, threads=1, block_rows=BLOCK_ROWS,
                            max_length=SCORE_MAX_LENGTH, progress=False)
    assert (resumed.skipped_blocks, resumed.written_blocks, resumed.scored_rows) == (4, 1, BLOCK_ROWS)
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet") if p != parts[2]} == \
           {name: stamp for name, stamp in stamps.items() if name != parts[2].name}
    again_table = read_scores(output)
    assert again_table.equals(table)


def test_score_dataset_command_on_parquet_keeps_the_ids_column(ray_cluster, starter_fp32, trec_pairs,
                                                               reference_scores, tmp_path, capsys):
    """The CLI on a Parquet input with integer ids, in 3 blocks (the last one short)."""
    n = 600
    ids = [10_000 + 7 * i for i in range(n)]
    pq.write_table(pa.table({"pair_id": pa.array(ids, pa.int64()), "query": [q for _, q, _ in trec_pairs[:n]],
                             "document": [d for _, _, d in trec_pairs[:n]]}), tmp_path / "pairs.parquet",
                   row_group_size=128)
    output = tmp_path / "scores"
    assert main(["score-dataset", "--reranker", str(starter_fp32), "--input", str(tmp_path / "pairs.parquet"),
                 "--output", str(output), "--concurrency", "2", "--block-rows", "250", "--id-field", "pair_id",
                 "--max-length", str(SCORE_MAX_LENGTH)]) == 0
    assert f"{n} pairs in 3 blocks; 0 already written, 3 written now" in capsys.readouterr().out
    table = read_scores(output)
    assert table.column("id").type == pa.int64() and table.column("id").to_pylist() == ids
    assert np.array_equal(table.column("score").to_numpy(), reference_scores[:n])


def test_score_dataset_refuses_what_it_did_not_create_and_names_bad_input(starter_fp32, tmp_path):
    """Checked before Ray starts (no cluster needed)."""
    pairs = [("a", "what is ray", "a distributed engine"), ("b", "what is ray", "a fish")]
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not create"):
        score_dataset(starter_fp32, source, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"

    output = tmp_path / "scores"
    output.mkdir()
    (output / JOB_FILE).write_text(json.dumps({"input_sha256": "0" * 64}))
    with pytest.raises(OutputExistsError, match=r"another job \(input_sha256, rows"):
        score_dataset(starter_fp32, source, output, progress=False)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "document": "d"}\n{"query": "q", "document": 3}\n')
    with pytest.raises(InvalidArgumentError, match=r"bad.jsonl:2: \"document\" must be a string"):
        score_dataset(starter_fp32, bad, tmp_path / "out", progress=False)
    with pytest.raises(InvalidArgumentError, match=r"must be a .jsonl or .parquet file, got '.csv'"):
        score_dataset(starter_fp32, tmp_path / "pairs.csv", tmp_path / "out", progress=False)


def test_serve_command_line_needs_ray_for_replica_flags(starter_fp32, capsys):
    assert main(["serve", "--reranker", str(starter_fp32), "--replicas", "2"]) == 2
    # one name for the cluster address in every command: --ray-address (issue 19: serve said --address)
    assert "--replicas, --max-replicas, --max-ongoing-requests and --ray-address lay out replicas on Ray: add --ray" \
           in capsys.readouterr().err


def test_a_replica_refuses_an_artifact_other_than_the_one_the_application_was_built_with(starter_fp32, tmp_path):
    """Every replica compares the manifest it sees with the driver's (a node with a stale copy
    fails to start instead of serving another model); no cluster needed."""
    import shutil

    from crossrank.artifact import sha256_file
    from crossrank.errors import ArtifactError
    from crossrank.front.ray.serve import _check_same_artifacts, manifest_digests

    config = ServeConfig(reranker=f"starter={starter_fp32}")
    digests = manifest_digests(config)
    assert digests == {"reranker starter": sha256_file(starter_fp32 / "manifest.json")}
    _check_same_artifacts(config, digests)  # the same artifact: accepted
    stale = tmp_path / "stale"
    shutil.copytree(starter_fp32, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["note"] = "another export"
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="every node must see the same artifact at the same path"):
        _check_same_artifacts(ServeConfig(reranker=f"starter={stale}"), digests)
