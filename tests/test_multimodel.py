"""Several models in one ``crossrank serve`` process (issue 23), spoken to by the real cohere
(ClientV2) and openai SDKs on 127.0.0.1.

The server holds the reranker ladder of ``make demo`` (the 2-, 4- and 6-layer starters, int8; the
2-layer one a copy with a calibration), a cascade of two of them, the MiniLM embedder and the
Semanlink index. Each ``model`` must get exactly what that model gives in process (int8 of the
per-row recipe is batch-invariant: within 1e-5), an unknown one a 404 naming those served, and
under mixed concurrent load over every model (bounded: 40 requests) every answer must equal its
single-request answer. Also: /v1/search through the cascade, evidence and truncation fields over
HTTP, their metrics and log line.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import crossrank
from crossrank.calibration import CALIBRATION_FILE, Calibration
from test_serve import Server, cohere, httpx, local_only_environment, openai  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
CASCADE = "fast=L4@12>starter@4"
LONG = "the farmer baked fresh bread in the morning and sold it at the market near the river. " * 100


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """The demo's artifacts (exported here when ``make demo`` has not run), the 2-layer rung copied
    with a Platt calibration beside it."""
    from crossrank.front.demo import prepare

    demo = prepare(ROOT / "artifacts", models=ROOT / "models")
    small, middle, large = demo.rerankers
    calibrated = tmp_path_factory.mktemp("ladder") / "starter-reranker-L2-int8"
    shutil.copytree(small, calibrated)
    Calibration("platt", {"a": 0.85, "b": -1.8}, crossrank.load_artifact(calibrated).sha256,
                {"source": "tests/test_multimodel.py"}).save(calibrated / CALIBRATION_FILE)
    return {"L2": calibrated, "L4": middle, "starter": large, "embedder": demo.embedder, "index": demo.index}


@pytest.fixture(scope="module")
def plain(ladder):
    """In process, the same artifacts (sharing off): the references."""
    models = {name: crossrank.Reranker(ladder[name]) for name in ("L2", "L4", "starter")}
    models["fast"] = crossrank.Cascade([models["L4"], models["starter"]], [12, 4])
    embedder = crossrank.Embedder(ladder["embedder"])
    index = crossrank.Index.load(ladder["index"], view=True, embedder=embedder)
    return {**models, "minilm": embedder,
            "search": crossrank.Pipeline(embedder, index, rerankers=[models["L4"], models["starter"]], depths=[12, 4])}


@pytest.fixture(scope="module")
def server(ladder, tmp_path_factory):
    process = Server(["--reranker", f"L2={ladder['L2']}", "--reranker", f"L4={ladder['L4']}",
                      "--reranker", f"starter={ladder['starter']}", "--cascade", CASCADE,
                      "--embedder", f"minilm={ladder['embedder']}", "--index", str(ladder["index"]),
                      "--max-documents", "64", "--core-sharing", "shared"],
                     tmp_path_factory.mktemp("multimodel") / "server.log")
    yield process
    process.stop()


def answer(model, query, documents):
    return [(r.index, r.score) for r in model.rerank(query, documents)]


def same(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-5)


def test_each_model_answers_what_it_answers_in_process(server, plain, trec_rag):
    client = cohere.ClientV2(api_key="dummy", base_url=server.url)
    row = trec_rag[7]
    documents = row["documents"][:12]
    for name in ("L2", "L4", "starter", "fast"):
        got = client.rerank(model=name, query=row["query"], documents=documents).results
        same([(r.index, r.relevance_score) for r in got], answer(plain[name], row["query"], documents))
    default = server.post("/v1/rerank", {"query": row["query"], "documents": documents}).json()  # no model
    same([(r["index"], r["relevance_score"]) for r in default["results"]], answer(plain["L2"], row["query"], documents))
    assert plain["L2"].scores == "calibrated"  # the first --reranker is the default, and it is calibrated
    vectors = openai.OpenAI(api_key="dummy", base_url=server.url + "/v1", max_retries=0).embeddings.create(
        model="minilm", input=documents[:3])
    assert vectors.model == "minilm"
    np.testing.assert_allclose(np.asarray([d.embedding for d in vectors.data], dtype=np.float32),
                               plain["minilm"].embed(documents[:3]), rtol=0, atol=1e-6)


def test_unknown_model_is_a_404_naming_the_served_ones(server):
    with pytest.raises(cohere.errors.NotFoundError) as caught:
        cohere.ClientV2(api_key="dummy", base_url=server.url).rerank(model="rerank-v3.5", query="q", documents=["d"])
    assert "'rerank-v3.5' is not served here" in caught.value.body["message"]
    assert "L2, L4, starter, fast" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError, match="embedding models: minilm") as raised:
        openai.OpenAI(api_key="dummy", base_url=server.url + "/v1", max_retries=0).embeddings.create(
            model="starter", input="x")  # a reranker is not an embedding model
    assert raised.value.body["param"] == "model"
    listed = openai.OpenAI(api_key="dummy", base_url=server.url + "/v1", max_retries=0).models.list().data
    assert [(m.id, m.kind) for m in listed] == [("L2", "reranker"), ("L4", "reranker"), ("starter", "reranker"),
                                                ("fast", "cascade"), ("minilm", "embedder")]
    too_many = server.post("/v2/rerank", {"model": "fast", "query": "q", "documents": ["d"] * 13})
    assert too_many.status_code == 422 and "at most 12 documents" in too_many.json()["message"]


def test_info_lists_every_model_with_its_memory_and_scores(server, ladder):
    info = httpx.get(server.url + "/info").json()
    models = info["models"]
    assert list(models) == ["L2", "L4", "starter", "minilm", "fast"]
    assert models["L2"]["default"] and models["minilm"]["default"] and not models["L4"]["default"]
    assert models["L2"]["scores"] == "calibrated" and models["L2"]["calibration"]["method"] == "platt"
    assert models["L4"]["scores"] == "sigmoid" and models["L4"]["calibration"] is None
    assert models["fast"]["stages"] == [{"model": "L4", "depth": 12}, {"model": "starter", "depth": 4}]
    for name in ("L2", "L4", "starter", "minilm"):
        assert models[name]["memory_mb"] > 1, name
    assert "path" not in models["starter"] and models["starter"]["precision"] == "int8"  # paths: --info-paths 1
    assert info["core_sharing"] == "shared" and models["L2"]["core_budget_slots"] >= 1
    metrics = server.metrics()
    assert metrics['crossrank_model_memory_bytes{model="starter"}'] > 1 << 20


def test_search_through_a_cascade(server, plain):
    body = server.post("/v1/search", {"model": "fast", "query": "knowledge graph embeddings", "k": 16,
                                      "top_n": 6}).json()
    want = plain["search"].search("knowledge graph embeddings", k=16, top_n=6)
    assert [h["id"] for h in body["hits"]] == want.ids
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in want.hits], rtol=0, atol=1e-5)
    assert [s["depth"] for s in body["stages"]] == [12, 4]


def test_evidence_and_truncation_over_http_and_in_the_metrics(server, plain):
    before = server.metrics()
    documents = ["TransE: translating embeddings for modeling multi-relational data (knowledge graphs).", LONG]
    body = server.post("/v1/rerank", {"model": "starter", "query": "knowledge graph embeddings",
                                      "documents": documents, "max_chunks_per_doc": 3, "return_evidence": True,
                                      "return_truncation": True}).json()
    want = plain["starter"].rerank("knowledge graph embeddings", documents, max_chunks_per_doc=3, return_evidence=True)
    for got, expected in zip(body["results"], want):
        assert got["index"] == expected.index and got["dropped_tokens"] == expected.dropped_tokens
        assert got["truncated"] == (expected.dropped_tokens > 0)
        evidence = got["evidence"]
        assert (evidence["start"], evidence["end"], evidence["window"]) == \
               (expected.evidence.start, expected.evidence.end, expected.evidence.window)
        assert [(w["start"], w["end"]) for w in evidence["windows"]] == \
               [(w.start, w.end) for w in expected.evidence.windows]
    long_result = next(r for r in body["results"] if r["index"] == 1)
    assert len(long_result["evidence"]["windows"]) == 3 and long_result["dropped_tokens"] > 0
    plain_body = server.post("/v1/rerank", {"model": "starter", "query": "q", "documents": documents}).json()
    assert set(plain_body["results"][0]) == {"index", "relevance_score", "document"}  # only when asked
    after = server.metrics()
    key = 'crossrank_{}_total{{model="starter"}}'
    assert after[key.format("truncated_documents")] - before.get(key.format("truncated_documents"), 0) == 2
    assert after[key.format("dropped_tokens")] - before.get(key.format("dropped_tokens"), 0) == \
        want[[r.index for r in want].index(1)].dropped_tokens + plain["starter"].rerank("q", [LONG])[0].dropped_tokens
    assert re.search(r"POST /v1/rerank 200 [\d.]+ ms model=starter documents=2 tokens=\d+ truncated=1 "
                     r"dropped_tokens=[1-9]\d*", server.log())


def test_mixed_concurrent_load_over_every_model(server, plain, trec_rag):
    """40 requests over the four rerank models and the embedder, 8 clients at once: each answer
    equals the single-request answer (same model, same documents, computed in process alone)."""
    jobs = []
    for i in range(40):
        row = trec_rag[60 + i]
        name = ("L2", "L4", "starter", "fast", "minilm")[i % 5]
        jobs.append((name, row["query"], row["documents"][: 4 + i % 9]))
    answers, errors = {}, []
    barrier = threading.Barrier(8)

    def client(c: int) -> None:
        try:
            co = cohere.ClientV2(api_key="dummy", base_url=server.url)
            oa = openai.OpenAI(api_key="dummy", base_url=server.url + "/v1", max_retries=0)
            barrier.wait(timeout=60)
            for i in range(c, len(jobs), 8):
                name, query, documents = jobs[i]
                if name == "minilm":
                    data = oa.embeddings.create(model=name, input=documents, encoding_format="float").data
                    answers[i] = np.asarray([d.embedding for d in data], dtype=np.float32)
                else:
                    answers[i] = [(r.index, r.relevance_score)
                                  for r in co.rerank(model=name, query=query, documents=documents).results]
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(answers) == len(jobs)
    for i, (name, query, documents) in enumerate(jobs):
        if name == "minilm":
            np.testing.assert_allclose(answers[i], plain["minilm"].embed(documents), rtol=0, atol=1e-5)
        else:
            same(answers[i], answer(plain[name], query, documents))


def test_a_cascade_keeps_to_one_token_budget(plain, trec_rag):
    """The server's --max-request-tokens reaches a cascade as one budget for all its stages."""
    row = trec_rag[7]
    query, documents = row["query"], row["documents"][:12]
    whole = plain["fast"].rerank(query, documents)
    first = plain["L4"].rerank(query, documents)
    assert whole.tokens > first.tokens
    assert plain["fast"].rerank(query, documents, token_budget=whole.tokens).tokens == whole.tokens
    with pytest.raises(crossrank.TokenBudgetError):
        plain["fast"].rerank(query, documents, token_budget=whole.tokens - 1)
    with pytest.raises(crossrank.TokenBudgetError, match="before stage 2"):
        plain["fast"].rerank(query, documents, token_budget=first.tokens)
