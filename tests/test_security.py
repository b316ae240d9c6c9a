"""A server that is safe to expose (issue 24): ``crossrank serve`` as a real process on 127.0.0.1,
spoken to by the real SDKs (cohere ``ClientV2``, openai, langchain-cohere) and by raw sockets for
what no SDK sends (slowloris, silence, a lying Content-Length).

Credentials and quotas; each defect of the issue as a regression test (k cap, a 5 MB document's
cost, slowloris, silent connections, the connection cap at a low open-file limit, a lying
Content-Length, deep JSON, huge numbers, huge deadlines, text/plain, unknown models, SIGTERM with
requests in flight); TLS with a CA and certificates made here (the `cryptography` package) that
the SDKs verify; and schemathesis fuzzing the server against its own OpenAPI document: no 5xx,
no answer outside the document.

Models: the tiny generated cross-encoder (fp32: its scores are the in-process scores exactly; what
it ranks is not the point here) and the real MiniLM bi-encoder in fp32. Every loop is bounded in
count or by a deadline; no traffic leaves the loopback interface.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import resource
import secrets
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
cohere = pytest.importorskip("cohere")
openai = pytest.importorskip("openai")
hypothesis = pytest.importorskip("hypothesis")
schemathesis = pytest.importorskip("schemathesis")

import crossrank
from crossrank.evaluation.datasets import load_semanlink
from test_serve import Server, local_only_environment  # noqa: F401 (an autouse fixture)

KEYS = {name: secrets.token_urlsafe(24) for name in ("alice", "bob", "carol", "erin", "env")}
CAROL_TOKENS_PER_SECOND = 40      # carol's own quota (her key-file line)
ERIN_MAX_CONCURRENT = 1
MAX_DOCUMENTS = 64
HEADER_TIMEOUT_S = 1
BODY_TIMEOUT_S = 2
KEEP_ALIVE_TIMEOUT_S = 2
MAX_CONNECTIONS = 40
WAIT_S = 60                        # the most any bounded wait below waits
MODEL_ROUTES = [("POST", "/v1/rerank", "cohere"), ("POST", "/v2/rerank", "cohere"), ("POST", "/rerank", "tei"),
                ("POST", "/v1/embeddings", "openai"), ("POST", "/embeddings", "openai"), ("POST", "/embed", "tei"),
                ("POST", "/v1/search", "cohere"), ("GET", "/v1/models", "openai"), ("GET", "/info", "cohere"),
                ("GET", "/openapi.json", "cohere")]


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def message_of(family: str, body: dict) -> str:
    return {"cohere": lambda b: b["message"], "tei": lambda b: b["error"],
            "openai": lambda b: b["error"]["message"]}[family](body)


def wait_until(condition, what: str, seconds: float = WAIT_S):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.1)
    return result


def raw_connection(server: Server, timeout: float = WAIT_S) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
    documents, _ = load_semanlink()
    return [d.id for d in documents[:200]], [d.text for d in documents[:200]]


@pytest.fixture(scope="module")
def plain(tiny_cross, bi_fp32, corpus, tmp_path_factory):
    """In-process references on the same artifacts, and the index the server searches."""
    embedder = crossrank.Embedder(bi_fp32)
    path = tmp_path_factory.mktemp("security-index") / "index"
    crossrank.Index.build(embedder, corpus[1], corpus[0], dtype="f32", progress=False).save(path)
    return {"reranker": crossrank.Reranker(tiny_cross), "embedder": embedder, "index_path": path}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text("# name:key [quotas]\n"
                    f"alice:{KEYS['alice']}\n"
                    f"bob:sha256:{hashlib.sha256(KEYS['bob'].encode()).hexdigest()}\n"
                    f"carol:{KEYS['carol']} tokens_per_second={CAROL_TOKENS_PER_SECOND}\n"
                    f"erin:{KEYS['erin']} max_concurrent={ERIN_MAX_CONCURRENT}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def guarded(tiny_cross, bi_fp32, plain, key_file, tmp_path_factory):
    """The server with keys (a file, and one from CROSSRANK_API_KEYS) and short time limits."""
    process = Server(["--reranker", str(tiny_cross), "--embedder", str(bi_fp32), "--index", str(plain["index_path"]),
                      "--api-key-file", str(key_file), "--max-documents", str(MAX_DOCUMENTS),
                      "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S),
                      "--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT_S), "--max-connections", str(MAX_CONNECTIONS),
                      "--allowed-hosts", "127.0.0.1,localhost"],
                     tmp_path_factory.mktemp("guarded") / "server.log",
                     env={"CROSSRANK_API_KEYS": f"env:{KEYS['env']}"})
    yield process
    process.stop()


# -- credentials ----------------------------------------------------------------------------------

def test_with_a_key_the_sdks_get_the_answers_unchanged(guarded, plain, corpus):
    pytest.importorskip("langchain_cohere")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    query, texts = "knowledge graph embeddings", corpus[1][:12]
    want = plain["reranker"].rerank(query, texts)
    co = cohere.ClientV2(api_key=KEYS["alice"], base_url=guarded.url)
    got = co.rerank(model=guarded.model("reranker"), query=query, documents=texts)
    assert [(r.index, r.relevance_score) for r in got.results] == [(r.index, r.score) for r in want]
    compressor = CohereRerank(model=guarded.model("reranker"), base_url=guarded.url, cohere_api_key=KEYS["bob"],
                              top_n=3)  # bob's key is stored as its SHA-256 only
    kept = compressor.compress_documents([Document(page_content=t, metadata={"n": i}) for i, t in enumerate(texts)],
                                         query)
    assert [d.metadata["n"] for d in kept] == [r.index for r in want[:3]]
    client = openai.OpenAI(api_key=KEYS["env"], base_url=guarded.url + "/v1", max_retries=0)  # from the environment
    vectors = client.embeddings.create(model=guarded.model("embedder"), input=texts[:5]).data
    np.testing.assert_array_equal(np.asarray([v.embedding for v in vectors], dtype=np.float32),
                                  plain["embedder"].embed(texts[:5]))


@pytest.mark.parametrize("method, path, family", MODEL_ROUTES, ids=[f"{m} {p}" for m, p, _ in MODEL_ROUTES])
def test_every_model_route_needs_a_valid_key(guarded, method, path, family):
    body = {"query": "q", "documents": ["d"], "texts": ["d"], "input": "d", "inputs": "d"}
    for headers, error in (({}, None), ({"Authorization": "Bearer " + "x" * 32}, "invalid_token"),
                           ({"Authorization": "Basic " + KEYS["alice"]}, None)):
        response = httpx.request(method, guarded.url + path, json=body if method == "POST" else None, headers=headers,
                                 timeout=30)
        assert response.status_code == 401, (headers, response.text)
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="crossrank"') and (error is None or error in challenge)
        assert "API key" in message_of(family, response.json())
        assert "x" * 32 not in response.text and KEYS["alice"] not in response.text
    answered = httpx.request(method, guarded.url + path, json=body if method == "POST" else None,
                             headers=bearer("alice"), timeout=60)
    assert answered.status_code != 401, answered.text


def test_health_and_metrics_stay_open_and_sdks_raise_on_a_wrong_key(guarded):
    assert httpx.get(guarded.url + "/health", timeout=30).json() == {"status": "ok"}
    assert httpx.get(guarded.url + "/metrics", timeout=30).status_code == 200
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="not-" + KEYS["alice"], base_url=guarded.url).rerank(
            model=guarded.model("reranker"), query="q", documents=["d"])
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(api_key="wrong-key-" + "0" * 20, base_url=guarded.url + "/v1", max_retries=0).models.list()


def test_a_key_over_its_token_rate_gets_429_while_another_key_is_served(guarded, corpus):
    body = {"query": "knowledge graph embeddings", "documents": corpus[1][:8]}
    refused = None
    for _ in range(30):  # carol's bucket holds one second of her rate: a few requests empty it
        response = httpx.post(guarded.url + "/v1/rerank", json=body, headers=bearer("carol"), timeout=60)
        assert response.status_code in (200, 429), response.text
        if response.status_code == 429:
            refused = response
            break
    assert refused is not None, "carol was never refused"
    assert int(refused.headers["retry-after"]) >= 1
    assert "tokens_per_second" in refused.json()["message"] and "'carol'" in refused.json()["message"]
    served = httpx.post(guarded.url + "/v1/rerank", json=body, headers=bearer("alice"), timeout=60)
    assert served.status_code == 200, served.text
    metrics = guarded.metrics()
    assert metrics['crossrank_key_refused_total{key="carol",quota="tokens_per_second"}'] >= 1
    assert metrics['crossrank_key_requests_total{key="carol",status="429"}'] >= 1
    assert metrics['crossrank_key_tokens_total{key="carol"}'] > CAROL_TOKENS_PER_SECOND


def test_a_key_over_its_concurrent_requests_gets_429(guarded, corpus):
    long_texts = [" ".join(corpus[1][i: i + 8]) for i in range(0, 8 * MAX_DOCUMENTS, 8)]  # seconds of MiniLM
    for _ in range(3):  # the first request must still run when the second comes: retried if it was faster
        first = {}
        thread = threading.Thread(target=lambda: first.setdefault("response", httpx.post(
            guarded.url + "/v1/embeddings", json={"input": long_texts}, headers=bearer("erin"), timeout=300)))
        thread.start()
        wait_until(lambda: "response" in first or guarded.metrics()["crossrank_requests_in_flight"] >= 2,
                   "erin's first request in flight")  # it, and the /metrics request asking
        second = httpx.post(guarded.url + "/v1/embeddings", json={"input": "x"}, headers=bearer("erin"), timeout=60)
        thread.join(timeout=300)
        if second.status_code == 429:
            break
    assert second.status_code == 429 and "max_concurrent" in second.json()["error"]["message"]
    assert second.json()["error"]["type"] == "rate_limit_exceeded" and second.headers["retry-after"] == "1"
    assert first["response"].status_code == 200


# -- bounded cost ---------------------------------------------------------------------------------

def test_k_is_capped_on_search(guarded):
    response = httpx.post(guarded.url + "/v1/search", json={"query": "knowledge graphs", "k": 1_000_000_000,
                                                            "top_n": 3}, headers=bearer("alice"), timeout=60)
    assert response.status_code == 422
    assert "k 1000000000" in response.json()["message"] and "--max-documents" in response.json()["message"]
    ok = httpx.post(guarded.url + "/v1/search", json={"query": "knowledge graphs", "k": MAX_DOCUMENTS},
                    headers=bearer("alice"), timeout=60)
    assert ok.status_code == 200 and ok.json()["candidates"] == MAX_DOCUMENTS


def test_a_5_mb_document_is_read_only_as_far_as_its_window(guarded, plain, corpus):
    """The answer equals the in-process one (the whole document's first window), and the core reads
    a bounded prefix of it (tests/test_long_texts.py counts the characters; benchmarks/request_cost.py
    measures the CPU and memory)."""
    big = (" ".join(corpus[1]) * 40)[: 5_000_000]
    documents = [big, corpus[1][0], corpus[1][1]]
    response = httpx.post(guarded.url + "/v1/rerank", json={"query": "knowledge graphs", "documents": documents},
                          headers=bearer("alice"), timeout=120)
    assert response.status_code == 200, response.text
    want = plain["reranker"].rerank("knowledge graphs", documents)
    got = [(r["index"], r["relevance_score"]) for r in response.json()["results"]]
    assert got == [(r.index, r.score) for r in want]
    assert response.json()["meta"]["tokens"]["input_tokens"] <= 3 * plain["reranker"].max_length


def test_a_request_past_the_token_budget_is_refused_before_it_runs(tiny_cross, tmp_path):
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app
    from crossrank.front.serve.config import ServeConfig
    from crossrank.front.serve.security import KeyRing

    app = build_app(ServeConfig(reranker=str(tiny_cross), max_request_tokens=100, shared=False), keys=KeyRing())
    app.state.models.load()
    with TestClient(app) as client:
        before = app.state.models.reranker(None).model.stats().rows
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["a few words here"] * 30})
        assert response.status_code == 413 and "--max-request-tokens" in response.json()["message"]
        assert app.state.models.reranker(None).model.stats().rows == before  # nothing ran
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a few words"] * 3}).status_code == 200


# -- time limits ----------------------------------------------------------------------------------

def test_slowloris_is_closed_by_the_header_timeout(guarded):
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    sock = raw_connection(guarded)
    sock.settimeout(0.2)
    answer, sent = b"", 0
    for byte in request:  # one byte per 0.2 s (the answer's wait): the whole request would take 45 s
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
        try:
            answer = sock.recv(4096)
            break
        except socket.timeout:
            continue
    sock.close()
    assert sent < len(request), "the server read the whole slow request"
    assert answer.startswith(b"HTTP/1.1 408") and b"--header-timeout" in answer


def test_silent_connections_are_closed_and_capped(guarded):
    before = guarded.metrics()
    sockets = [raw_connection(guarded) for _ in range(MAX_CONNECTIONS + 10)]
    answers = [read_until_closed(sock) for sock in sockets]  # each ends: a 503 at once, or a 408 after the timeout
    for sock in sockets:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") or a.startswith(b"HTTP/1.1 503") for a in answers), answers
    assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 10
    assert httpx.get(guarded.url + "/health", timeout=30).status_code == 200
    after = guarded.metrics()
    for reason, least in (("header_timeout", 1), ("max_connections", 10)):
        key = f'crossrank_connections_closed_total{{reason="{reason}"}}'
        assert after[key] - before.get(key, 0) >= least, reason


def test_an_idle_kept_alive_connection_is_closed(guarded):
    sock = raw_connection(guarded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = read_until_closed(sock)  # answered, then closed by the keep-alive timeout
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')


def test_a_lying_content_length_gets_408(guarded):
    sock = raw_connection(guarded)
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEYS["alice"].encode() + b"\r\nContent-Length: 10\r\n\r\n{}")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer and b"connection: close" in answer


def test_a_client_gone_mid_body_is_not_a_server_error(guarded):
    before = guarded.metrics()
    sock = raw_connection(guarded)
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEYS["alice"].encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"query\"")
    time.sleep(0.2)
    sock.close()
    key = 'crossrank_requests_total{endpoint="/v1/rerank",status="499"}'
    wait_until(lambda: guarded.metrics().get(key, 0) > before.get(key, 0), "the 499 counted")
    assert not any(k.endswith('status="500"}') for k in guarded.metrics())


@pytest.fixture(scope="module")
def low_fd_server(tiny_cross, tmp_path_factory):
    """A server whose open-file limit is 256 (soft and hard), with the default --max-connections."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    process = Server(["--reranker", str(tiny_cross), "--header-timeout", "2"],
                     tmp_path_factory.mktemp("low-fd") / "server.log", preexec_fn=limit_files)
    yield process
    process.stop()


def test_300_silent_connections_at_a_256_file_limit_do_not_take_the_server_down(low_fd_server):
    sockets = []
    for _ in range(300):
        try:
            sockets.append(raw_connection(low_fd_server, timeout=10))
        except OSError:  # the listen backlog may be full while the server refuses: still counted as refused
            pass
    refused = sum(read_until_closed(s).startswith(b"HTTP/1.1 503") for s in sockets)
    for s in sockets:
        s.close()
    assert refused >= 300 - 256, refused
    assert low_fd_server.process.poll() is None
    response = httpx.post(low_fd_server.url + "/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=60)
    assert response.status_code == 200
    assert "refused a connection" in low_fd_server.log() and "--max-connections" in low_fd_server.log()


def test_sigterm_answers_every_request_in_flight_refuses_new_ones_and_exits_0(bi_fp32, corpus, tmp_path):
    server = Server(["--embedder", str(bi_fp32), "--shutdown-grace", "300"], tmp_path / "server.log")
    try:
        texts = [" ".join(corpus[1][i: i + 6]) for i in range(0, 6 * 48, 6)]
        responses, threads = {}, []
        for i in range(4):
            def call(i=i):
                responses[i] = httpx.post(server.url + "/v1/embeddings", json={"input": texts}, timeout=300)
            threads.append(threading.Thread(target=call))
            threads[-1].start()
        wait_until(lambda: server.metrics()["crossrank_requests_in_flight"] >= 5, "4 requests in flight (+ /metrics)")
        server.process.send_signal(signal.SIGTERM)
        refused = wait_until(lambda: _refused_while_draining(server), "a 503 while draining")
        assert refused.headers["retry-after"] == "1" and "shutting down" in refused.json()["error"]["message"]
        for thread in threads:
            thread.join(timeout=300)
        assert [responses[i].status_code for i in range(4)] == [200] * 4
        assert all(len(responses[i].json()["data"]) == len(texts) for i in range(4))
        assert server.process.wait(timeout=WAIT_S) == 0
        assert "SIGTERM: draining 4 request(s) in flight" in server.log()
    finally:
        server.stop()


def _refused_while_draining(server: Server):
    try:
        response = httpx.post(server.url + "/v1/embeddings", json={"input": "x"}, timeout=30)
    except httpx.TransportError:
        return None
    return response if response.status_code == 503 else None


# -- input ----------------------------------------------------------------------------------------

CLIENT_MISTAKES = [
    # path, raw body, content type, status, words of the message
    ("/v1/rerank", b'{"query": "q", "documents": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", 422,
     ["nested deeper"]),
    ("/v1/rerank", b'{"query": "q", "documents": ["d"], "top_n": ' + b"9" * 5000 + b"}", "application/json", 422,
     ["5000 characters"]),
    ("/v1/search", b'{"query": "q", "deadline_ms": 1e30}', "application/json", 422, ["deadline_ms", "3600000"]),
    ("/v1/search", b'{"query": "q", "deadline_ms": ' + b"1" * 39 + b"}", "application/json", 422, ["deadline_ms"]),
    ("/v1/search", b'{"query": "q", "deadline_ms": Infinity}', "application/json", 422, ["Infinity"]),
    ("/v1/search", b'{"query": "q", "k": 1e400}', "application/json", 422, ["1e400"]),
    ("/v1/rerank", b'{"query": "q", "documents": ["d"], "top_n": NaN}', "application/json", 422, ["NaN"]),
    ("/v1/rerank", b'{"query": "q", "documents": ["d"]}', "text/plain", 415, ["application/json", "text/plain"]),
    ("/v1/rerank", b'{"query": "q", "documents": ["d"]}', None, 415, ["no Content-Type"]),
    ("/v1/rerank", b'{"query": "q", "documents": ["d"], "model": "gpt-4"}', "application/json", 404,
     ["'gpt-4'", "GET /v1/models"]),
    ("/v2/rerank", b'{"query": "q", "documents": ["d"], "model": "rerank-v3.5"}', "application/json", 404,
     ["'rerank-v3.5'"]),
    ("/v2/rerank", b'{"query": "q", "documents": ["d"]}', "application/json", 422, ["model is required"]),
    ("/v1/embeddings", b'{"input": "x", "model": "text-embedding-3-small"}', "application/json", 404,
     ["'text-embedding-3-small'"]),
    ("/v1/rerank", b'{"query": "q", "documents": [{"text": "d"}], "rank_fields": ["title"]}', "application/json", 422,
     ["'title'", "rank_fields"]),
]


@pytest.mark.parametrize("path, raw, content_type, status, words", CLIENT_MISTAKES,
                         ids=[f"{m[0]}-{m[3]}-{i}" for i, m in enumerate(CLIENT_MISTAKES)])
def test_client_mistakes_get_a_4xx_in_the_family_envelope(guarded, path, raw, content_type, status, words):
    headers = bearer("alice") | ({"content-type": content_type} if content_type else {})
    response = httpx.post(guarded.url + path, content=raw, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    message = message_of("openai" if "embeddings" in path else "cohere", response.json())
    for word in words:
        assert word in message, (word, message)
    if status == 404 and path != "/v1/embeddings":
        assert guarded.model("reranker") in message  # names what is served


def test_host_header_is_checked_and_wrong_methods_answer_in_the_envelope(guarded):
    evil = httpx.get(guarded.url + "/v1/models", headers=bearer("alice") | {"Host": "evil.example:80"}, timeout=30)
    assert evil.status_code == 400 and "--allowed-hosts" in evil.json()["error"]["message"]
    wrong = httpx.get(guarded.url + "/v1/rerank", headers=bearer("alice"), timeout=30)
    assert wrong.status_code == 405 and wrong.json() == {"message": "Method Not Allowed"}


def test_info_shows_no_filesystem_path(guarded, tiny_cross, bi_fp32, plain):
    info = httpx.get(guarded.url + "/info", headers=bearer("alice"), timeout=30).json()
    text = json.dumps(info)
    for path in (tiny_cross, plain["index_path"]):
        assert str(path) not in text and str(path.parent) not in text
    assert "configured" not in info and "path" not in info["models"][tiny_cross.name]
    assert "/" not in info["models"][bi_fp32.name]["source"] and info["index"]["id"] == plain["index_path"].name


def test_metrics_and_openapi_flags(tiny_cross):
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app
    from crossrank.front.serve.config import ServeConfig
    from crossrank.front.serve.security import KeyRing, parse_keys

    keys = KeyRing(parse_keys(f"alice:{KEYS['alice']}", "test"))
    guarded = TestClient(build_app(ServeConfig(reranker=str(tiny_cross), protect_metrics=True), keys=keys))
    assert guarded.get("/metrics").status_code == 401 and guarded.get("/health").status_code != 401
    assert guarded.get("/metrics", headers=bearer("alice")).status_code == 200
    assert guarded.get("/openapi.json", headers=bearer("alice")).json()["security"] == [{"bearer": []}]
    closed = TestClient(build_app(ServeConfig(reranker=str(tiny_cross), openapi=False), keys=keys))
    assert closed.get("/openapi.json", headers=bearer("alice")).status_code == 404


def test_cors_is_off_unless_asked(tiny_cross):
    from starlette.testclient import TestClient

    from crossrank.front.serve.app import build_app
    from crossrank.front.serve.config import ServeConfig
    from crossrank.front.serve.security import KeyRing

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    closed = TestClient(build_app(ServeConfig(reranker=str(tiny_cross)), keys=KeyRing()))
    assert "access-control-allow-origin" not in closed.options("/v1/rerank", headers=preflight).headers
    opened = TestClient(build_app(ServeConfig(reranker=str(tiny_cross), cors_origins=("https://app.example",)),
                                  keys=KeyRing()))
    answer = opened.options("/v1/rerank", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in opened.options(
        "/v1/rerank", headers=preflight | {"Origin": "https://evil.example"}).headers


def test_the_log_names_keys_and_never_holds_one(guarded):
    for name in ("alice", "carol"):  # this test's own lines, whatever ran before it
        httpx.post(guarded.url + "/v1/rerank", json={"query": "q", "documents": ["d"]}, headers=bearer(name),
                   timeout=60)
    log = guarded.log()
    assert re.search(r"POST /v1/rerank 200 [\d.]+ ms model=\S+ documents=\d+ tokens=\d+ truncated=\d+ "
                     r"dropped_tokens=\d+ key=alice", log)
    assert "key=carol" in log and "API key(s): alice, bob, carol, erin, env" in log
    for secret in KEYS.values():
        assert secret not in log
    assert "Traceback" not in log


# -- exposure, key files --------------------------------------------------------------------------

def test_listening_beyond_loopback_needs_keys_or_an_explicit_flag(tiny_cross, capsys, monkeypatch, caplog):
    from crossrank.front.cli import main
    from crossrank.front.serve.security import KeyRing, check_exposure

    monkeypatch.delenv("CROSSRANK_API_KEYS", raising=False)
    assert main(["serve", "--reranker", str(tiny_cross), "--host", "0.0.0.0"]) == 2
    assert "--allow-unauthenticated" in capsys.readouterr().err
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, KeyRing(), allow_unauthenticated=False)
    with caplog.at_level("WARNING", logger="crossrank.serve"):
        check_exposure("0.0.0.0", KeyRing(), allow_unauthenticated=True)
    assert "without API keys" in caplog.text


def test_key_files_are_checked_and_their_errors_never_show_a_key(tmp_path):
    from crossrank.errors import UsageError
    from crossrank.front.serve.security import KeyRing, key_digest, load_api_keys, parse_keys

    secret = secrets.token_urlsafe(24)
    ring = KeyRing(parse_keys(f"a:{secret}\n\n# comment\nb:sha256:{key_digest('x' * 20).hex()} max_concurrent=2", "f"))
    assert ring.identify(secret).name == "a" and ring.identify("x" * 20).max_concurrent == 2
    assert ring.identify(secret[:-1]) is None and ring.identify("") is None
    for text, words in ((f"{secret}", "name:key"), ("a:short", "16"), (f"a:{secret} speed=3", "quota"),
                        (f"a:{secret}\na:{secret}x", "two API keys"), (f"a:{secret}\nb:{secret}", "same key"),
                        ("a:sha256:12", "64 hex")):
        with pytest.raises(UsageError, match=words) as caught:
            KeyRing(parse_keys(text, "f"))
        assert secret not in str(caught.value)
    with pytest.raises(UsageError, match="no key"):
        (tmp_path / "empty").write_text("# nothing\n")
        load_api_keys(str(tmp_path / "empty"), environ={})
    assert load_api_keys(None, environ={"CROSSRANK_API_KEYS": f"e:{secret}, f:{secret}f"}).names == ["e", "f"]


# -- TLS ------------------------------------------------------------------------------------------

def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, both signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(subject, key, issuer, issuer_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem: str, certificate, key) -> None:
        (folder / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue(name("crossrank test CA"), ca_key, name("crossrank test CA"), ca_key,
               [(x509.BasicConstraints(ca=True, path_length=0), True),
                (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                               key_encipherment=False, data_encipherment=False, key_agreement=False,
                               encipher_only=False, decipher_only=False), True)])
    write("ca", ca, ca_key)
    for stem, usage, alt in (("server", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("client")])):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = issue(name(stem), key, ca.subject, ca_key,
                            [(x509.SubjectAlternativeName(alt), False), (x509.ExtendedKeyUsage([usage]), False),
                             (x509.BasicConstraints(ca=False, path_length=None), True)])
        write(stem, certificate, key)
    return {"ca": folder / "ca.pem", "server": folder / "server.pem", "server_key": folder / "server.key",
            "client": folder / "client.pem", "client_key": folder / "client.key"}


def test_tls_in_process_with_client_certificates_and_the_sdks_verifying(tiny_cross, bi_fp32, corpus, tmp_path):
    files = _certificates(tmp_path)
    server = Server(["--reranker", str(tiny_cross), "--embedder", str(bi_fp32), "--ssl-certfile", str(files["server"]),
                     "--ssl-keyfile", str(files["server_key"]), "--ssl-ca-certs", str(files["ca"])],
                    tmp_path / "server.log", scheme="https", verify=_client_context(files))
    try:
        verified = _client_context(files)
        co = cohere.ClientV2(api_key="unused", base_url=server.url, httpx_client=httpx.Client(verify=verified))
        got = co.rerank(model=server.model("reranker"), query="knowledge graphs", documents=corpus[1][:6])
        want = crossrank.Reranker(tiny_cross).rerank("knowledge graphs", corpus[1][:6])
        assert [(r.index, r.relevance_score) for r in got.results] == [(r.index, r.score) for r in want]
        httpx2 = pytest.importorskip("httpx2")  # the openai SDK's HTTP client
        client = openai.OpenAI(api_key="unused", base_url=server.url + "/v1", max_retries=0,
                               http_client=httpx2.Client(verify=verified))
        assert len(client.embeddings.create(model=server.model("embedder"), input=corpus[1][:3]).data) == 3
        unverified = ssl.create_default_context()  # the system's CAs: not ours
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(server.url + "/health", verify=unverified, timeout=30)
        anonymous = ssl.create_default_context(cafile=str(files["ca"]))  # trusts the server, shows no certificate
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(server.url + "/health", verify=anonymous, timeout=30)
    finally:
        server.stop()


def _client_context(files: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(str(files["client"]), str(files["client_key"]))
    return context


# -- fuzzing against the OpenAPI document ----------------------------------------------------------

FUZZ_EXAMPLES = 50          # hypothesis examples per operation and generation mode (positive, negative)


def fuzz(url: str, headers: dict, examples: int = FUZZ_EXAMPLES) -> list[tuple[str, str, int]]:
    """schemathesis, from the server's own /openapi.json: for every operation, requests that fit the
    document (positive) and requests that break it (negative), ``examples`` of each. Every answer
    must be a status the document lists for that operation, in its content type and schema, and
    none a 5xx (else the check's failure is raised). Returns (operation, mode, status) per case."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=headers)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    cases: list[tuple[str, str, int]] = []

    def run_cases(operation, mode) -> None:
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def run(case):
            response = case.call(headers=headers, timeout=120)
            cases.append((f"{case.method} {case.path}", mode.value, response.status_code))
            case.validate_response(response, checks=checks, headers=headers)

        run()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            if mode is GenerationMode.POSITIVE or operation.method.upper() == "POST":  # a GET has nothing to break
                run_cases(operation, mode)
    return cases


def test_fuzzed_requests_get_no_5xx_and_answers_the_document_allows(guarded):
    cases = fuzz(guarded.url, bearer("alice"))
    statuses: dict[int, int] = {}
    for _, _, status in cases:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"\nschemathesis: {len(cases)} cases over {len({op for op, _, _ in cases})} operations "
          f"({sum(m == 'negative' for _, m, _ in cases)} negative); statuses {dict(sorted(statuses.items()))}")
    assert len({op for op, _, _ in cases}) == 11 and not any(status >= 500 for status in statuses)
    assert "Traceback" not in guarded.log() and " ERROR " not in guarded.log()
