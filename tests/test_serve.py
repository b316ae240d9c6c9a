"""``crossrank serve`` as a real process on 127.0.0.1 (a free port), spoken to by the real client
SDKs its users have: cohere (``Client`` = v1, ``ClientV2``), langchain-cohere's ``CohereRerank``,
openai (embeddings, base64 and float), and plain HTTP for TEI's shapes.

Models: the shipped starter reranker exported to fp32 (batch-invariant, so every answer must equal
the in-process ``Reranker.rerank`` exactly, whatever it was batched with) and to int8 (held to
the fidelity bar), the real MiniLM bi-encoder in fp32 (batch-invariant up to one ulp; its
requests here run one at a time, in the same batches as in process, so they must match
exactly), an index of Semanlink documents. No
traffic leaves the loopback interface; every loop is bounded in count.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
cohere = pytest.importorskip("cohere")
openai = pytest.importorskip("openai")

import crossrank
from crossrank.evaluation.datasets import load_semanlink
from crossrank.settings import layout_rule, physical_cores

# Clients talk to 127.0.0.1 only: no proxies, no telemetry, no hosted endpoints from the environment.
LOCAL_ONLY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "LANGSMITH_TRACING": "false",
              "LANGCHAIN_TRACING_V2": "false", "LANGCHAIN_TRACING": "false", "ANONYMIZED_TELEMETRY": "false",
              "HAYSTACK_TELEMETRY_ENABLED": "False"}
DROPPED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "CO_API_URL",
           "CO_API_KEY", "COHERE_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL")
SERVED_THREADS = layout_rule(physical_cores()).threads  # the rule's layout: what the servers here run with
MAX_DOCUMENTS = 64
MAX_REQUEST_BYTES = 256 * 1024
SMALL_QUEUE_TOKENS = 8000
STARTUP_SECONDS = 300


@pytest.fixture(scope="module", autouse=True)
def local_only_environment():
    saved = dict(os.environ)
    for name in DROPPED:
        os.environ.pop(name, None)
    os.environ.update(LOCAL_ONLY)
    yield
    os.environ.clear()
    os.environ.update(saved)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m crossrank serve`` process; its log (stderr + stdout) goes to ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, port: int | None = None,
                 preexec_fn=None, scheme: str = "http", verify=True):
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = env or {}
        environment = {k: v for k, v in os.environ.items() if k not in DROPPED} | LOCAL_ONLY | (env or {})
        command = [sys.executable, "-m", "crossrank", "serve", *args]
        if port is None:
            command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environment,
                                        preexec_fn=preexec_fn)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert self.process.poll() is None, f"server exited {self.process.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"server not healthy after {STARTUP_SECONDS} s:\n{self.log()}"
            try:
                if httpx.get(self.url + "/health", timeout=5, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def model(self, kind: str) -> str:
        """The name the server serves its (first) reranker or embedder by (GET /v1/models; a
        request's "model" must name it: NAME of NAME=FOLDER, else the folder's name)."""
        args, flag = self.process.args, f"--{kind}"
        value = args[args.index(flag) + 1] if flag in args else self.env[f"CROSSRANK_{kind.upper()}"].split(",")[0]
        name, named, _ = value.partition("=")
        return name if named and "/" not in name else Path(value).name

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def post(self, path: str, body=None, content: bytes | None = None, **kwargs):
        if content is None:
            content = json.dumps(body).encode()
        return httpx.post(self.url + path, content=content, headers={"content-type": "application/json"},
                          timeout=kwargs.pop("timeout", 120), **kwargs)

    def metrics(self) -> dict[str, float]:
        """Prometheus samples, keyed by name{labels} as exposed."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
    documents, _ = load_semanlink()
    picked = documents[:200]
    return [d.id for d in picked], [d.text for d in picked]


@pytest.fixture(scope="module")
def plain(starter_fp32, bi_fp32, corpus, tmp_path_factory):
    """In-process references: the same artifacts, sharing off, the threads of the server's workers
    (fp32 results may move in their last bits with the thread count: docs/serving.md "Layout")."""
    reranker = crossrank.Reranker(starter_fp32, threads=SERVED_THREADS)
    embedder = crossrank.Embedder(bi_fp32, threads=SERVED_THREADS)
    ids, texts = corpus
    path = tmp_path_factory.mktemp("serve-index") / "index"
    crossrank.Index.build(embedder, texts, ids, dtype="f32", progress=False).save(path)
    index = crossrank.Index.load(path, embedder=embedder)
    return {"reranker": reranker, "embedder": embedder, "index_path": path,
            "pipeline": crossrank.Pipeline(embedder, index, reranker)}


@pytest.fixture(scope="module")
def server(plain, starter_fp32, bi_fp32, tmp_path_factory):
    process = Server(["--reranker", f"starter={starter_fp32}", "--embedder", f"minilm={bi_fp32}",
                      "--index", str(plain["index_path"]),
                      "--max-documents", str(MAX_DOCUMENTS), "--max-request-bytes", str(MAX_REQUEST_BYTES)],
                     tmp_path_factory.mktemp("serve") / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def small_server(starter_int8, tmp_path_factory):
    """The int8 export with a small queue, configured through environment variables only."""
    port = free_port()
    env = {"CROSSRANK_RERANKER": f"m={starter_int8}", "CROSSRANK_HOST": "127.0.0.1", "CROSSRANK_PORT": str(port),
           "CROSSRANK_MAX_QUEUE_TOKENS": str(SMALL_QUEUE_TOKENS)}
    process = Server([], tmp_path_factory.mktemp("serve-small") / "server.log", env=env, port=port)
    yield process
    process.stop()


def ranked(reranker, query, docs, top_n=None, raw=False):
    return [(r.index, r.score) for r in reranker.rerank(query, docs, top_n=top_n, raw_scores=raw)]


# -- the SDKs, exactly (fp32) ---------------------------------------------------------------------

def test_cohere_v1_client(server, plain, trec_rag):
    client = cohere.Client(api_key="dummy", base_url=server.url)
    row = trec_rag[0]
    response = client.rerank(model=server.model("reranker"), query=row["query"], documents=row["documents"], top_n=5,
                             return_documents=True)
    want = plain["reranker"].rerank(row["query"], row["documents"], top_n=5)
    assert [(r.index, r.relevance_score) for r in response.results] == [(r.index, r.score) for r in want]
    assert [r.document.text for r in response.results] == [r.document for r in want]
    assert response.meta.tokens.input_tokens > 20 * 50 and response.meta.billed_units.search_units == 1
    bare = client.rerank(query=row["query"], documents=row["documents"][:4], return_documents=False)
    assert [r.document for r in bare.results] == [None] * 4  # omitted, not null


def test_cohere_v2_client(server, plain, trec_rag):
    client = cohere.ClientV2(api_key="dummy", base_url=server.url)
    row = trec_rag[1]
    response = client.rerank(model=server.model("reranker"), query=row["query"], documents=row["documents"])
    assert [(r.index, r.relevance_score) for r in response.results] == ranked(plain["reranker"], row["query"],
                                                                            row["documents"])
    assert response.meta.api_version.version == "2"


def test_langchain_cohere_rerank(server, plain, trec_rag):
    pytest.importorskip("langchain_cohere")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    row = trec_rag[2]
    compressor = CohereRerank(model=server.model("reranker"), base_url=server.url, cohere_api_key="dummy", top_n=3)
    documents = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(row["documents"])]
    kept = compressor.compress_documents(documents, row["query"])
    want = plain["reranker"].rerank(row["query"], row["documents"], top_n=3)
    assert [d.metadata["n"] for d in kept] == [r.index for r in want]
    assert [d.metadata["relevance_score"] for d in kept] == [r.score for r in want]


def test_cohere_documents_as_objects_and_rank_fields(server, plain):
    documents = [{"text": "Knowledge graphs store facts as triples.", "title": "KG"},
                 {"text": "Cats sleep most of the day.", "title": "Cats"}]
    response = server.post("/v1/rerank", {"query": "what is a knowledge graph", "documents": documents})
    assert response.status_code == 200
    body = response.json()
    want = ranked(plain["reranker"], "what is a knowledge graph", [d["text"] for d in documents])
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == want
    assert [r["document"] for r in body["results"]] == [documents[i] for i, _ in want]  # returned as given
    fields = server.post("/rerank", {"query": "what is a knowledge graph", "documents": documents,
                                     "rank_fields": ["title", "text"], "top_n": 0}).json()
    composed = [f"title: {d['title']}\ntext: {d['text']}" for d in documents]
    assert [(r["index"], r["relevance_score"]) for r in fields["results"]] == \
        ranked(plain["reranker"], "what is a knowledge graph", composed)


def test_tei_rerank(server, plain, trec_rag):
    row = trec_rag[3]
    response = server.post("/rerank", {"query": row["query"], "texts": row["documents"][:7], "raw_scores": True,
                                       "return_text": True, "truncate": True})
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [(r["index"], r["score"]) for r in body] == ranked(plain["reranker"], row["query"], row["documents"][:7],
                                                              raw=True)
    assert [r["text"] for r in body] == [row["documents"][r["index"]] for r in body]


def test_max_tokens_per_doc_cuts_documents(server, plain, trec_rag):
    row = trec_rag[4]
    body = server.post("/v2/rerank", {"model": "starter", "query": row["query"], "documents": row["documents"][:5],
                                      "max_tokens_per_doc": 16}).json()
    tokenizer = plain["reranker"].tokenizer.tokenizer
    cut = []
    for text in row["documents"][:5]:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        cut.append(text[: encoding.offsets[15][1]] if len(encoding.ids) > 16 else text)
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == ranked(plain["reranker"], row["query"], cut)
    assert body["meta"]["tokens"]["input_tokens"] < 5 * (16 + 40)


def test_openai_embeddings_base64_and_float(server, plain, corpus):
    client = openai.OpenAI(api_key="dummy", base_url=server.url + "/v1", max_retries=0)
    texts = corpus[1][:9]
    want = plain["embedder"].embed(texts)
    name = server.model("embedder")
    # The fp32 bi-encoder moves a vector by about one ulp with the batch it runs in (docs/serving.md),
    # and the server's workers cut other batches than the in-process call: equal to 1e-6.
    by_default = client.embeddings.create(model=name, input=texts)  # the SDK asks for base64 and decodes it
    got = np.asarray([d.embedding for d in by_default.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    as_float = client.embeddings.create(model=name, input=texts, encoding_format="float")
    np.testing.assert_array_equal(np.asarray([d.embedding for d in as_float.data], dtype=np.float32), got)
    raw = client.embeddings.create(model=name, input=texts[0], encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)
    assert by_default.usage.prompt_tokens == int(plain["embedder"].tokenizer.rows(texts).lengths.sum())
    assert [d.index for d in by_default.data] == list(range(len(texts))) and by_default.model == name
    root = openai.OpenAI(api_key="dummy", base_url=server.url, max_retries=0)  # /embeddings without /v1
    # Other texts, other batches: the fp32 bi-encoder moves a vector by about one ulp with its batch's
    # row count (README "Serving"; with the 512-token CPU budget, text 1 runs alone among the 9).
    np.testing.assert_allclose(np.float32(root.embeddings.create(model="minilm", input=texts[:2]).data[1].embedding),
                               want[1], rtol=0, atol=1e-6)
    assert {m.id for m in client.models.list().data} == {"starter", "minilm"}


def test_tei_embed(server, plain, corpus):
    texts = corpus[1][20:25]
    body = server.post("/embed", {"inputs": texts}).json()
    np.testing.assert_array_equal(np.asarray(body, dtype=np.float32), plain["embedder"].embed(texts))
    single = server.post("/embed", {"inputs": texts[0], "truncate": True}).json()
    np.testing.assert_array_equal(np.asarray(single, dtype=np.float32), plain["embedder"].embed(texts[:1]))


def test_search(server, plain):
    body = server.post("/v1/search", {"query": "knowledge graph embeddings", "k": 20, "top_n": 5}).json()
    want = plain["pipeline"].search("knowledge graph embeddings", k=20, top_n=5)
    assert [(h["id"], h["score"], h["similarity"], h["first_stage_rank"]) for h in body["hits"]] == \
        [(h.id, h.score, h.similarity, h.first_stage_rank) for h in want.hits]
    assert body["candidates"] == 20 and body["reranked"] and body["scored"] == 20
    assert set(body["timings_ms"]) == {"embed", "search", "fetch", "rerank", "total"}
    late = server.post("/v1/search", {"query": "knowledge graph embeddings", "k": 20, "deadline_ms": 0}).json()
    assert late["scored"] == 0 and all(h["score"] is None for h in late["hits"])  # unscored: null, not NaN
    assert all(h["stage_scores"] == [None] for h in late["hits"]) and late["stages"][0]["scored"] == 0


def test_health_info_and_metrics(server):
    # the series below exist once a rerank and an embedding were served: serve one of each here
    assert server.post("/v1/rerank", {"query": "q", "documents": ["d"]}).status_code == 200
    assert server.post("/v1/embeddings", {"model": "minilm", "input": "x"}).status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert info["models"]["starter"]["precision"] == "fp32" and info["models"]["starter"]["max_length"] == 512
    assert info["models"]["starter"]["shared"] and info["models"]["minilm"]["dim"] == 384
    assert info["models"]["starter"]["default"] and info["models"]["starter"]["scores"] == "sigmoid"
    assert info["models"]["starter"]["memory_mb"] > 0 and info["models"]["minilm"]["memory_mb"] > 0
    rule = {"workers": physical_cores(), "threads": 1, "origin": "rule"}  # no flags, no runtime.json: the rule
    assert info["models"]["starter"]["layout"] == rule and info["models"]["starter"]["workers"] == rule["workers"]
    assert info["limits"] == {"max_queue_tokens": 1 << 20, "max_documents": MAX_DOCUMENTS,
                              "max_request_bytes": MAX_REQUEST_BYTES}
    assert info["index"]["documents"] == 200
    metrics = server.metrics()
    for name in ('crossrank_requests_total{endpoint="/v1/rerank",status="200"}',
                 'crossrank_request_seconds_count{endpoint="/v1/rerank"}',
                 'crossrank_batch_rows_count{model="starter"}', 'crossrank_queue_tokens{model="starter"}',
                 'crossrank_model_computed_tokens_total{model="starter"}', 'crossrank_tokens_total{model="minilm"}'):
        assert name in metrics, name
    assert metrics['crossrank_queue_tokens{model="starter"}'] == 0


# -- many clients at once -------------------------------------------------------------------------

def test_sixteen_concurrent_clients_each_get_their_single_request_answer(server, plain, trec_rag):
    """16 clients x 2 requests of mixed sizes over three APIs, all at once: every answer equals the
    in-process single-request answer (fp32), none lost, none duplicated, and batches were shared."""
    sizes = (1, 2, 4, 6, 9)
    jobs = [[(trec_rag[40 + 2 * c + j]["query"], trec_rag[40 + 2 * c + j]["documents"][: sizes[(c + j) % 5]])
             for j in range(2)] for c in range(16)]
    before = server.metrics()
    answers: dict[tuple[int, int], list] = {}
    errors = []
    barrier = threading.Barrier(16)

    def client(c: int) -> None:
        try:
            v1 = cohere.Client(api_key="dummy", base_url=server.url)
            v2 = cohere.ClientV2(api_key="dummy", base_url=server.url)
            barrier.wait(timeout=60)
            for j, (query, docs) in enumerate(jobs[c]):
                kind = (c + j) % 3
                if kind == 0:
                    got = [(r.index, r.relevance_score) for r in v1.rerank(query=query, documents=docs).results]
                elif kind == 1:
                    got = [(r.index, r.relevance_score)
                           for r in v2.rerank(model=server.model("reranker"), query=query,
                                              documents=docs).results]
                else:
                    body = server.post("/rerank", {"query": query, "texts": docs}).json()
                    got = [(r["index"], r["score"]) for r in body]
                answers[(c, j)] = got
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(answers) == 32
    for (c, j), got in answers.items():
        query, docs = jobs[c][j]
        assert got == ranked(plain["reranker"], query, docs), f"client {c} request {j}"
    after = server.metrics()
    served = sum(after.get(f'crossrank_requests_total{{endpoint="{e}",status="200"}}', 0)
                 - before.get(f'crossrank_requests_total{{endpoint="{e}",status="200"}}', 0)
                 for e in ("/v1/rerank", "/v2/rerank", "/rerank"))
    assert served == 32
    rows = (after['crossrank_model_rows_total{model="starter"}'] - before['crossrank_model_rows_total{model="starter"}'])
    assert rows == sum(len(docs) for job in jobs for _, docs in job)  # every pair run exactly once
    alone = (after['crossrank_batch_requests_bucket{le="1.0",model="starter"}']
             - before['crossrank_batch_requests_bucket{le="1.0",model="starter"}'])
    batches = (after['crossrank_batch_requests_count{model="starter"}']
               - before['crossrank_batch_requests_count{model="starter"}'])
    assert batches > alone, "no batch held rows of two requests"


def test_client_that_disconnects_has_its_rows_dropped(server, trec_rag):
    docs = [d for r in trec_rag[100:104] for d in r["documents"]][:MAX_DOCUMENTS]
    before = server.metrics()
    with pytest.raises(httpx.ReadTimeout):
        server.post("/v1/rerank", {"query": trec_rag[100]["query"], "documents": docs}, timeout=0.5)
    key = 'crossrank_requests_total{endpoint="/v1/rerank",status="499"}'
    deadline = time.monotonic() + 120
    while server.metrics().get(key, 0) <= before.get(key, 0):
        assert time.monotonic() < deadline, "the server did not notice the disconnect"
        time.sleep(0.2)
    deadline = time.monotonic() + 120
    while server.metrics()['crossrank_queue_tokens{model="starter"}'] > 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rows = server.metrics()['crossrank_model_rows_total{model="starter"}'] - before['crossrank_model_rows_total{model="starter"}']
    assert rows < len(docs), f"all {len(docs)} pairs ran for a client that had gone"


# -- bad requests ---------------------------------------------------------------------------------

DOCS = ["first document", "second document"]
BAD = [
    # path, body (bytes = sent as is), status, envelope family, words the message must contain
    ("/v1/rerank", b"{not json", 422, "cohere", ["JSON"]),
    ("/v1/rerank", b"[1, 2]", 422, "cohere", ["JSON object"]),
    ("/v1/rerank", {"documents": DOCS}, 422, "cohere", ["query"]),
    ("/v1/rerank", {"query": 5, "documents": DOCS}, 422, "cohere", ["query", "str"]),
    ("/v1/rerank", {"query": "q", "documents": "one text"}, 422, "cohere", ["documents", "list"]),
    ("/v1/rerank", {"query": "q", "documents": ["ok", 7]}, 422, "cohere", ["documents[1]"]),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "no text"}]}, 422, "cohere", ["documents[0]", "text"]),
    ("/v1/rerank", {"query": "q", "documents": DOCS, "top_n": "3"}, 422, "cohere", ["top_n"]),
    ("/v1/rerank", {"query": "q", "documents": DOCS, "top_n": -1}, 422, "cohere", ["top_n"]),
    ("/v1/rerank", {"query": "q", "documents": DOCS, "return_documents": "yes"}, 422, "cohere", ["return_documents"]),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": [{"text": "v2 takes strings"}]}, 422, "cohere",
     ["documents[0]"]),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": DOCS, "max_tokens_per_doc": 0}, 422, "cohere",
     ["max_tokens_per_doc"]),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": DOCS, "instruction": 3}, 422, "cohere",
     ["instruction", "str"]),
    ("/v1/rerank", {"query": "q", "documents": DOCS, "instruction": "Find answers"}, 422, "cohere",
     ["instruction", "takes none"]),
    ("/v1/rerank", {"query": "q", "documents": ["d"] * (MAX_DOCUMENTS + 1)}, 413, "cohere", ["documents", "65"]),
    ("/v1/rerank", {"query": "q", "documents": ["x" * 1000] * 300}, 413, "cohere", ["body", "max-request-bytes"]),
    ("/rerank", {"query": "q", "texts": "one"}, 422, "tei", ["texts"]),
    ("/rerank", {"query": "q", "texts": DOCS, "raw_scores": 1}, 422, "tei", ["raw_scores"]),
    ("/rerank", {"query": "q", "texts": ["d"] * (MAX_DOCUMENTS + 1)}, 413, "tei", ["texts"]),
    ("/rerank", {"query": "", "documents": DOCS}, 422, "cohere", ["query", "empty"]),
    ("/embed", {"inputs": 3}, 422, "tei", ["inputs"]),
    ("/embed", {"inputs": DOCS, "normalize": False}, 422, "tei", ["normalize"]),
    ("/embed", b"{", 422, "tei", ["JSON"]),
    ("/v1/embeddings", {"model": "m", "input": [[1, 2, 3]]}, 422, "openai", ["input", "token ids"]),
    ("/v1/embeddings", {"model": "m", "input": ["ok", None]}, 422, "openai", ["input[1]"]),
    ("/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "hex"}, 422, "openai", ["encoding_format"]),
    ("/v1/embeddings", {"model": "minilm", "input": "x", "dimensions": 128}, 422, "openai", ["dimensions", "384"]),
    ("/embeddings", {"model": 3, "input": "x"}, 422, "openai", ["model"]),
    ("/v1/embeddings", {"model": "m", "input": ["x"] * (MAX_DOCUMENTS + 1)}, 413, "openai", ["input"]),
    ("/v1/search", {"query": "q", "k": 0}, 422, "cohere", ["k"]),
    ("/v2/rerank", {"model": "rerank-v3.5", "query": "q", "documents": DOCS}, 404, "cohere",
     ["'rerank-v3.5' is not served here", "starter"]),
    ("/rerank", {"model": "nope", "query": "q", "texts": DOCS}, 404, "tei", ["'nope'", "starter"]),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, 404, "openai", ["minilm"]),
    ("/v1/search", {"model": "minilm", "query": "q"}, 404, "cohere", ["'minilm' is not served here", "starter"]),
    ("/v1/search", {"query": "q", "deadline_ms": -5}, 422, "cohere", ["deadline_ms"]),
]


@pytest.mark.parametrize("path,body,status,family,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_request_gets_its_status_and_names_the_field(server, path, body, status, family, words):
    response = server.post(path, content=body) if isinstance(body, bytes) else server.post(path, body)
    assert response.status_code == status, response.text
    envelope = response.json()
    if family == "cohere":
        message = envelope["message"]
    elif family == "tei":
        message = envelope["error"]
        assert envelope["error_type"] == "Validation"
    else:
        message = envelope["error"]["message"]
        assert envelope["error"]["type"] == "invalid_request_error"
    for word in words:
        assert word in message, f"{message!r} does not mention {word!r}"


def test_sdk_raises_the_servers_message(server):
    with pytest.raises(openai.UnprocessableEntityError, match="encoding_format"):
        openai.OpenAI(api_key="dummy", base_url=server.url + "/v1", max_retries=0).embeddings.create(
            model="m", input="x", encoding_format="hex")
    with pytest.raises(cohere.errors.UnprocessableEntityError) as caught:
        cohere.ClientV2(api_key="dummy", base_url=server.url).rerank(model=server.model("reranker"), query=" ",
                                                                     documents=DOCS)
    assert "query" in caught.value.body["message"]


def test_one_log_line_per_request(server):
    lines = [line for line in server.log().splitlines() if "crossrank.serve INFO POST" in line]
    assert any(re.search(r"POST /v1/rerank 200 [\d.]+ ms model=starter documents=20 tokens=\d{4,} truncated=0 "
                         r"dropped_tokens=0", line) for line in lines), lines[-5:]
    assert any(re.search(r"POST /v1/embeddings 422 [\d.]+ ms", line) for line in lines)


# -- int8, overload, environment variables ---------------------------------------------------------

def test_int8_server_meets_the_fidelity_bar(small_server, starter_int8, starter_fp32):
    """Concurrent requests share int8 batches. Dynamic int8 is not batch-invariant (yet), so scores
    may move with batch mates, but must stay within the int8 export bar: Spearman >= 0.99 against
    fp32 on the export's own kind of sample (Semanlink tag queries, relevant and other documents)."""
    from scipy.stats import spearmanr

    from crossrank.export.fidelity import semanlink_sample

    sample = semanlink_sample(6)
    rows = list(zip(sample.queries, sample.documents))
    results = [None] * len(rows)

    def call(i):
        client = cohere.ClientV2(api_key="dummy", base_url=small_server.url)
        answer = client.rerank(model=small_server.model("reranker"), query=rows[i][0], documents=rows[i][1])
        results[i] = {r.index: r.relevance_score for r in answer.results}

    for group in ((0, 1, 2), (3, 4, 5)):  # three at a time: within the small queue
        threads = [threading.Thread(target=call, args=(i,)) for i in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    served = np.asarray([results[i][j] for i, (_, docs) in enumerate(rows) for j in range(len(docs))])
    for path in (starter_fp32, starter_int8):
        reference = crossrank.Reranker(path)
        want = np.asarray([s for q, docs in rows for s in reference.score([(q, d) for d in docs])])
        rho = spearmanr(served, want).statistic
        assert rho >= 0.99, f"served int8 vs in-process {path.name}: Spearman {rho:.4f}, " \
                            f"max abs diff {np.abs(served - want).max():.4f}"


def test_overload_gives_429_then_the_server_stays_healthy(small_server, trec_rag):
    info = httpx.get(small_server.url + "/info").json()
    assert info["limits"]["max_queue_tokens"] == SMALL_QUEUE_TOKENS  # from CROSSRANK_MAX_QUEUE_TOKENS
    assert info["models"]["m"]["precision"] == "int8"
    before = small_server.metrics()
    responses = [None] * 8
    barrier = threading.Barrier(8)

    def call(i):
        barrier.wait(timeout=60)
        responses[i] = small_server.post("/v1/rerank", {"query": trec_rag[210 + i]["query"],
                                                        "documents": trec_rag[210 + i]["documents"]})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert "overloaded" in response.json()["message"] and "max_queue_tokens" in response.json()["message"]
        else:
            assert len(response.json()["results"]) == 20
    after = small_server.metrics()
    assert (after['crossrank_overloaded_total{endpoint="/v1/rerank"}']
            - before.get('crossrank_overloaded_total{endpoint="/v1/rerank"}', 0)) == statuses.count(429)
    assert httpx.get(small_server.url + "/health").status_code == 200
    assert after['crossrank_queue_tokens{model="m"}'] == 0
    again = small_server.post("/rerank", {"query": trec_rag[210]["query"], "texts": trec_rag[210]["documents"][:3]})
    assert again.status_code == 200 and len(again.json()) == 3


# -- in process: readiness, failures, the command line ---------------------------------------------

def test_not_ready_until_loaded_then_ready(tiny_cross):
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app
    from crossrank.front.serve.config import ServeConfig

    app = build_app(ServeConfig(reranker=str(tiny_cross)))
    models = app.state.models
    release = threading.Event()
    real_load = models.load
    models.load = lambda: (release.wait(60), real_load())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "loading"
        refused = client.post("/v1/rerank", json={"query": "q", "documents": DOCS})
        assert refused.status_code == 503 and "loading" in refused.json()["message"]
        refused = client.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
        assert client.post("/embed", json={"inputs": "x"}).json()["error_type"] == "Unhealthy"
        release.set()
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.1)
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/v1/rerank", json={"query": "q", "documents": DOCS}).status_code == 200
        missing = client.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert missing.status_code == 404 and "--embedder" in missing.json()["error"]["message"]


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app
    from crossrank.front.serve.config import ServeConfig

    (tmp_path / "not-an-artifact").mkdir()
    app = build_app(ServeConfig(reranker=str(tmp_path / "not-an-artifact")))
    with TestClient(app) as client:
        for _ in range(300):
            if client.get("/health").json()["status"] != "loading":
                break
            time.sleep(0.05)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "manifest" in health.json()["message"]


def test_serve_command_line_errors(capsys, tmp_path, monkeypatch):
    from crossrank.front.cli import main

    for name in ("CROSSRANK_RERANKER", "CROSSRANK_EMBEDDER", "CROSSRANK_INDEX", "CROSSRANK_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve"]) == 2
    assert "--reranker" in capsys.readouterr().err
    assert main(["serve", "--reranker", str(tmp_path), "--index", str(tmp_path)]) == 2
    assert "--embedder" in capsys.readouterr().err
    assert main(["serve", "--reranker", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    monkeypatch.setenv("CROSSRANK_PORT", "eighty")
    with pytest.raises(SystemExit):
        main(["serve", "--reranker", str(tmp_path)])
    assert "TCP port" in capsys.readouterr().err


# -- the routes alone, in process (issue 19) -------------------------------------------------------

def one_prefix_each(seen: list[str], texts: list[str]) -> bool:
    """Whether ``seen`` holds one prefix of each text and nothing else (a long text is tokenized only
    as far as its tokens are needed: crossrank.tokenize.encode_prefixes)."""
    left = list(texts)
    for text in sorted(seen, key=len, reverse=True):
        match = next((t for t in left if t.startswith(text)), None)
        if match is None:
            return False
        left.remove(match)
    return not left


def test_a_request_is_tokenized_once(tiny_cross, bi_fp32, trec_rag):
    """Tokenizations per request: every text of a /rerank or /v1/embeddings request goes through
    the tokenizer exactly once (a long one only as far as its window needs; the core's count comes
    back with the result), usage included."""
    from count_tokenizations import CountingTokenizer
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app
    from crossrank.front.serve.config import ServeConfig

    app = build_app(ServeConfig(reranker={"m": str(tiny_cross)}, embedder={"e": str(bi_fp32)}, shared=False))
    models = app.state.models
    models.load()
    reranker, embedder = models.reranker("m").model, models.embedder("e").model
    reranker_tokens = reranker.tokenizer.tokenizer = CountingTokenizer(reranker.tokenizer.tokenizer)
    embedder_tokens = embedder.tokenizer.tokenizer = CountingTokenizer(embedder.tokenizer.tokenizer)
    row = trec_rag[5]
    client = TestClient(app)
    for path, body in (("/v2/rerank", {"model": "m", "query": row["query"], "documents": row["documents"],
                                       "max_tokens_per_doc": 32}),
                       ("/rerank", {"query": row["query"], "texts": row["documents"]})):
        reranker_tokens.texts.clear()
        response = client.post(path, json=body)
        assert response.status_code == 200
        assert one_prefix_each(reranker_tokens.texts, [row["query"], *row["documents"]]), path
    usage = client.post("/v2/rerank", json={"model": "m", "query": row["query"],
                                            "documents": row["documents"], "max_tokens_per_doc": 32}
                        ).json()["meta"]["tokens"]["input_tokens"]
    plain = crossrank.Reranker(tiny_cross)
    assert usage == plain.rerank(row["query"], row["documents"], max_tokens_per_doc=32).tokens
    embedder_tokens.texts.clear()
    embedded = client.post("/v1/embeddings", json={"model": "e", "input": row["documents"][:5]}).json()
    assert one_prefix_each(embedder_tokens.texts, row["documents"][:5])
    assert embedded["usage"]["prompt_tokens"] == int(embedder.token_lengths(row["documents"][:5]).sum())


def test_one_mapping_from_errors_to_answers():
    from crossrank.errors import CrossrankError, OverloadedError
    from crossrank.front.serve.errors import (BadRequest, NotConfigured, NotReady, ServeError, TooLarge,
                                              error_reply)
    from crossrank.front.serve.protocols import error_body

    for err, status in ((BadRequest("bad top_n", param="top_n"), 422), (TooLarge("too big", "body"), 413),
                        (NotReady("loading"), 503), (NotConfigured("no embedder"), 404)):
        assert isinstance(err, ServeError) and isinstance(err, CrossrankError)
        reply = error_reply(err)
        assert (reply.status, reply.message, reply.headers) == (status, str(err), {})
    assert error_reply(BadRequest("bad top_n", param="top_n")).param == "top_n"
    overloaded = error_reply(OverloadedError("queue full", retry_after_s=2.2))
    assert (overloaded.status, overloaded.headers) == (429, {"Retry-After": "3"})
    assert error_reply(crossrank.InvalidArgumentError("k must be ...")).status == 422
    assert error_reply(KeyError("x")).status == 500 and "KeyError" in error_reply(KeyError("x")).message
    assert error_body("tei", 429, "full") == {"error": "full", "error_type": "Overloaded"}
    assert error_body("openai", 404, "no", "model")["error"] == {"message": "no", "type": "invalid_request_error",
                                                                 "param": "model", "code": None}


@pytest.mark.parametrize("field, value, message", [
    ("port", 70000, r"port must be an integer in \[0, 65535\]"), ("max_documents", 0, "max_documents must be"),
    ("max_request_bytes", "8M", "max_request_bytes must be"), ("workers", 65, r"workers must be an integer in \[1, 64\]"),
    ("device", "tpu", "device 'tpu' is not one of"), ("threads", 0, "threads must be"), ("shared", "yes", "shared must be")])
def test_serve_config_checks_itself(field, value, message):
    from crossrank.front.serve.config import ServeConfig

    with pytest.raises(crossrank.InvalidArgumentError, match=message):
        ServeConfig(reranker="x", **{field: value})


@pytest.mark.parametrize("family", ["modernbert", "deberta-v2", "qwen3"])
def test_each_export_family_serves_through_the_cohere_sdk(family, family_artifact, trec_rag, tmp_path):
    """The tiny random model of each family (tests/test_families.py) behind ``crossrank serve``: the
    cohere SDK's answers equal the in-process Reranker's (fp32, batch-invariant); the decoder takes
    crossrank's ``instruction`` field (sent as an additional body parameter of the SDK)."""
    artifact = family_artifact(family)
    process = Server(["--reranker", f"{family}={artifact}"], tmp_path / "server.log")
    try:
        reranker = crossrank.Reranker(artifact, threads=SERVED_THREADS)
        client = cohere.ClientV2(api_key="dummy", base_url=process.url)
        row = trec_rag[6]
        response = client.rerank(model=family, query=row["query"], documents=row["documents"][:8], top_n=5)
        want = ranked(reranker, row["query"], row["documents"][:8], top_n=5)
        assert [r.index for r in response.results] == [i for i, _ in want]
        # ModernBERT's head pools a mean over tokens: its last bit follows the batch (docs/export.md)
        np.testing.assert_allclose([r.relevance_score for r in response.results], [s for _, s in want],
                                   rtol=0, atol=0 if family != "modernbert" else 1e-6)
        info = httpx.get(process.url + "/info", timeout=30).json()["models"][family]
        assert info["instruction"]["accepted"] is (family == "qwen3")
        if family == "qwen3":
            instruction = "Given a question, retrieve passages that disagree with it"
            instructed = client.rerank(model=family, query=row["query"], documents=row["documents"][:8],
                                       request_options={"additional_body_parameters": {"instruction": instruction}})
            want = reranker.rerank(row["query"], row["documents"][:8], instruction=instruction)
            assert [(r.index, r.relevance_score) for r in instructed.results] == [(r.index, r.score) for r in want]
            assert [r.relevance_score for r in instructed.results] != [r.relevance_score for r in response.results]
    finally:
        process.stop()
