"""The first stage in real stores: PostgreSQL 16 + pgvector 0.6.2 (the ``pgserver`` wheel's own server,
on a unix socket) and Milvus Lite (``python -m milvus_lite server`` on 127.0.0.1; a lighter
re-implementation of the Milvus server: only calls distributed Milvus supports are used), both
started here, plus BM25 beside the embedded Index and hybrid fusion.

Every store is built from the same Semanlink documents and the same vectors as a usearch Index,
so their candidates and the reranked results can be compared one to one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crossrank import Candidates, EmbedderMismatchError, Hybrid, Index, NotOwnedError, Pipeline, UsageError
from crossrank.evaluation.datasets import load_semanlink, semanlink_queries
from crossrank.retriever import fuse

pytest.importorskip("psycopg")
pytest.importorskip("pymilvus")

N_DOCS = 1000
K = 10


# -- servers --------------------------------------------------------------------------------

def start_postgres():
    """A PostgreSQL server of its own (unix socket only, no TCP) in a fresh folder: (server, folder).
    As root, pgserver runs postgres as the user 'pgserver', which must be able to reach the folder
    (pytest's own temporary folders are private to root)."""
    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="crossrank-pg-"))
    folder.chmod(0o755)
    return pgserver.get_server(folder / "data", cleanup_mode="delete"), folder


@pytest.fixture(scope="module")
def postgres():
    server, folder = start_postgres()
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def milvus():
    """A Milvus Lite server process on 127.0.0.1, its data in a folder of its own (not pytest's,
    which a concurrent pytest session may clean up)."""
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="crossrank-milvus-"))
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(folder / "data"),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert proc.poll() is None, f"milvus_lite server exited: {(folder / 'server.log').read_text()[-500:]}"
                time.sleep(0.1)
        yield f"milvus://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


# -- data -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder(bi_fp32):
    from crossrank.embedder import Embedder

    return Embedder(bi_fp32)


@pytest.fixture(scope="module")
def corpus():
    documents, _ = load_semanlink()
    docs = documents[:N_DOCS]
    return [d.id for d in docs], [d.text for d in docs]


@pytest.fixture(scope="module")
def vectors(embedder, corpus):
    return embedder.embed(corpus[1])


@pytest.fixture(scope="module")
def queries(embedder):
    texts = [q.text for q in semanlink_queries("test")[:60]]
    return texts, embedder.embed(texts)


@pytest.fixture(scope="module")
def index(embedder, corpus, vectors):
    ids, texts = corpus
    return Index.build(embedder, texts, ids, vectors=vectors, dtype="f32", progress=False)


@pytest.fixture(scope="module")
def pg_store(postgres, embedder, corpus, vectors):
    from crossrank.stores.pgvector import PgvectorStore

    ids, texts = corpus
    store = PgvectorStore.build(postgres, "semanlink", embedder, texts, ids, vectors=vectors, progress=False,
                                metadata=[{"position": i} for i in range(len(ids))])
    yield store
    store.close()


@pytest.fixture(scope="module")
def milvus_store(milvus, embedder, corpus, vectors):
    from crossrank.stores.milvus import MilvusStore

    ids, texts = corpus
    store = MilvusStore.build(milvus, "semanlink", embedder, texts, ids, vectors=vectors, progress=False,
                              metadata=[{"position": i} for i in range(len(ids))])
    yield store
    store.close()


@pytest.fixture(params=["pgvector", "milvus"])
def store(request):
    return request.getfixturevalue({"pgvector": "pg_store", "milvus": "milvus_store"}[request.param])


def tie_aware_recall(found_ids: list, exact: np.ndarray, id_position: dict, k: int) -> float:
    """Share of the k found ids whose exact similarity reaches the k-th best exact similarity (so a
    duplicate text standing in for its twin counts as found)."""
    kth = np.sort(exact)[::-1][k - 1]
    return sum(exact[id_position[i]] >= kth - 1e-5 for i in found_ids[:k]) / k


# -- quality of the first stage ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["index", "pg_store", "milvus_store"])
def test_recall_at_10_against_exact_search(request, name, corpus, vectors, queries):
    retriever = request.getfixturevalue(name)
    texts, query_vectors = queries
    position = {doc_id: i for i, doc_id in enumerate(corpus[0])}
    found = retriever.retrieve_many(texts, query_vectors, K)
    recalls = [tie_aware_recall(c.ids, vectors @ q, position, K) for c, q in zip(found, query_vectors)]
    assert np.mean(recalls) >= 0.99, (name, np.mean(recalls))
    # every candidate carries its own text and its cosine similarity
    for c, q in zip(found[:5], query_vectors[:5]):
        assert c.documents == [corpus[1][position[i]] for i in c.ids]
        np.testing.assert_allclose(c.scores, [vectors[position[i]] @ q for i in c.ids], atol=1e-4)
    # k beyond pgvector's default ef_search (40) still returns k candidates
    assert [len(c.ids) for c in retriever.retrieve_many(texts[:3], query_vectors[:3], 100)] == [100] * 3


def test_pipeline_over_each_store_reranks_like_the_index(store, index, embedder, cross_fp32, queries):
    from crossrank.reranker import Reranker

    reranker = Reranker(cross_fp32)
    texts = queries[0][:8]
    over_store = Pipeline(embedder, store, reranker).search_many(texts, k=30, top_n=10)
    over_index = Pipeline(embedder, index, reranker).search_many(texts, k=30, top_n=10)
    same_candidates = 0
    for a, b, query in zip(over_store, over_index, texts):
        # the same candidates up to duplicate texts (same vector, same score: either twin may come back)
        if sorted(store.retrieve(query, k=30).documents) != sorted(index.retrieve(query, k=30).documents):
            continue
        same_candidates += 1
        assert [(h.score, h.document) for h in a.hits] == [(h.score, h.document) for h in b.hits], query
        assert all(isinstance(h.metadata, dict) for h in a.hits)
    assert same_candidates >= 7, same_candidates


# -- writes ---------------------------------------------------------------------------------

def test_upsert_and_delete_are_visible_to_the_next_search(store, queries):
    texts, query_vectors = queries
    probe = query_vectors[0] / np.linalg.norm(query_vectors[0])
    store.upsert(["first version"], ["probe-doc"], vectors=probe[None, :], metadata=[{"v": 1}])
    top = store.retrieve(texts[0], probe, k=1)
    assert (top.ids, top.documents, top.metadata) == (["probe-doc"], ["first version"], [{"v": 1}])
    store.upsert(["second version"], ["probe-doc"], vectors=probe[None, :], metadata=[{"v": 2}])
    top = store.retrieve(texts[0], probe, k=1)
    assert (top.ids, top.documents, top.metadata) == (["probe-doc"], ["second version"], [{"v": 2}])
    assert store.delete(["probe-doc", "never-there"]) == 1
    assert "probe-doc" not in store.retrieve(texts[0], probe, k=5).ids
    assert "probe-doc" not in store


def test_four_searchers_beside_one_writer(store, queries):
    """4 threads search while one rewrites 20 documents (text and metadata say the same version):
    no error, and no hit whose text and metadata disagree (a half-written document)."""
    texts, query_vectors = queries
    ids = [f"live-{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    live_vectors = query_vectors[:20] + rng.normal(0, 0.01, (20, query_vectors.shape[1])).astype(np.float32)
    store.upsert([f"{i} version 0" for i in ids], ids, vectors=live_vectors, metadata=[{"version": 0}] * 20)
    stop = time.monotonic() + 4.0
    errors, seen, torn = [], [0], []

    def search(worker: int) -> None:
        n = 0
        try:
            while time.monotonic() < stop and n < 400:
                q = (worker + n) % 20
                found = store.retrieve(texts[q], query_vectors[q], k=5)
                for doc_id, text, meta in zip(found.ids, found.documents, found.metadata):
                    if doc_id.startswith("live-"):
                        seen[0] += 1
                        if not re.fullmatch(rf"{doc_id} version (\d+)", text) or \
                                text != f"{doc_id} version {meta['version']}":
                            torn.append((doc_id, text, meta))
                n += 1
        except Exception as err:  # noqa: BLE001 - every error is a failure of the test
            errors.append(repr(err))

    def write() -> None:
        version = 0
        try:
            while time.monotonic() < stop and version < 200:
                version += 1
                store.upsert([f"{i} version {version}" for i in ids], ids, vectors=live_vectors,
                             metadata=[{"version": version}] * 20)
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=search, args=(w,)) for w in range(4)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store.delete(ids)
    assert errors == [] and torn == []
    assert seen[0] > 0


LOADER = """
import sys
from crossrank.embedder import Embedder
from crossrank.evaluation.datasets import load_semanlink
from crossrank.stores.pgvector import PgvectorStore
url, table, embedder = sys.argv[1:4]
docs = load_semanlink()[0][:{n}]
store = PgvectorStore.open(url, table, Embedder(embedder))
store.upsert(["NEW " + d.text for d in docs], [d.id for d in docs], batch_size=8)
"""


def test_kill_during_copy_leaves_the_old_rows(pg_store, postgres, bi_fp32, corpus):
    """kill -9 of a process while its COPY streams (seen in pg_stat_progress_copy): every row is the
    old one, whole; the next writer is not blocked."""
    import psycopg

    n = 600
    proc = subprocess.Popen([sys.executable, "-c", LOADER.format(n=n), postgres, "semanlink", str(bi_fp32)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    copied = 0
    with psycopg.connect(postgres, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            row = conn.execute("SELECT tuples_processed FROM pg_stat_progress_copy").fetchone()
            if row and 0 < row[0] < n:
                copied = row[0]
                break
            time.sleep(0.05)
        assert copied, f"the loader never showed a COPY in progress: {proc.stderr.read().decode()[-500:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        texts = dict(conn.execute("SELECT id, document FROM semanlink WHERE id = ANY(%s)",
                                  (corpus[0][:n],)).fetchall())
    ids, old = corpus
    assert len(texts) == n and all(texts[i] == t for i, t in zip(ids[:n], old[:n]))
    assert len(pg_store) == N_DOCS
    pg_store.upsert(["after the kill"], ["after-kill"], vectors=np.ones((1, pg_store.dim), dtype=np.float32))
    assert pg_store.delete(["after-kill"]) == 1


# -- refusals -------------------------------------------------------------------------------

def test_a_table_crossrank_did_not_create_is_never_written(postgres, embedder, corpus, vectors, queries):
    import psycopg
    from pgvector.psycopg import register_vector

    from crossrank.stores.pgvector import PgvectorStore

    ids, texts = corpus
    with psycopg.connect(postgres, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("CREATE TABLE user_docs (pk bigint PRIMARY KEY, body text, title text, emb vector(384))")
        with conn.cursor().copy("COPY user_docs (pk, body, title, emb) FROM STDIN") as copy:
            for i in range(300):
                copy.write_row((i, texts[i], f"title {i}", vectors[i]))
    before = _table_state(postgres, "user_docs")
    with pytest.raises(NotOwnedError, match="not created by crossrank"):
        PgvectorStore.build(postgres, "user_docs", embedder, texts[:5], ids[:5], vectors=vectors[:5], force=True,
                            progress=False)
    with pytest.raises(NotOwnedError):
        PgvectorStore.open(postgres, "user_docs", embedder)
    own = PgvectorStore.attach(postgres, "user_docs", id_column="pk", text_column="body", vector_column="emb",
                               metadata_columns=["title"], embedder=embedder)
    found = own.retrieve(queries[0][0], queries[1][0], k=5)
    assert found.documents == [texts[int(i)] for i in found.ids]
    assert found.metadata[0] == {"title": f"title {found.ids[0]}"}
    assert own.lexical().retrieve(queries[0][0], k=3).ids  # full-text search over its text column
    with pytest.raises(UsageError, match="read-only"):
        own.upsert(["x"], ["x"], vectors=vectors[:1])
    with pytest.raises(UsageError, match="read-only"):
        own.delete([1])
    assert _table_state(postgres, "user_docs") == before


def _table_state(url: str, table: str):
    import psycopg

    with psycopg.connect(url) as conn:
        return (conn.execute(f"SELECT count(*), md5(string_agg(pk::text || body, ',' ORDER BY pk)) FROM {table}").fetchone(),
                conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                             "%s::regclass AND attnum > 0 ORDER BY attnum", (table,)).fetchall(),
                conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (table,)).fetchone())


def test_a_collection_crossrank_did_not_create_is_never_written(milvus, embedder, corpus, vectors):
    from pymilvus import DataType, MilvusClient

    from crossrank.stores.milvus import MilvusStore, client_uri

    client = MilvusClient(uri=client_uri(milvus)[0])
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=384)
    client.create_collection("theirs", schema=schema)
    client.insert("theirs", [{"pk": "a", "v": vectors[0].tolist()}])
    with pytest.raises(NotOwnedError, match="not created by crossrank"):
        MilvusStore.build(milvus, "theirs", embedder, corpus[1][:3], corpus[0][:3], vectors=vectors[:3], force=True,
                          progress=False)
    with pytest.raises(NotOwnedError):
        MilvusStore.open(milvus, "theirs", embedder)
    assert client.has_collection("theirs")
    client.close()


def test_a_mismatched_embedder_is_refused(pg_store, milvus_store, bi_int8):
    from crossrank.embedder import Embedder
    from crossrank.stores.milvus import MilvusStore
    from crossrank.stores.pgvector import PgvectorStore

    other = Embedder(bi_int8)
    with pytest.raises(EmbedderMismatchError, match="sha256"):
        PgvectorStore.open(pg_store.url, "semanlink", other)
    with pytest.raises(EmbedderMismatchError, match="sha256"):
        MilvusStore.open(milvus_store.url, "semanlink", other)
    with pytest.raises(EmbedderMismatchError):
        Pipeline(other, pg_store)


@pytest.mark.parametrize("url", ["postgresql://bob:s3cret@127.0.0.1:1/db", "postgresql://bob:s3cret@/db?host=/nonexistent",
                                 "postgresql://bob:s3cret@host:notaport/db", "milvus://bob:s3cret@127.0.0.1:1",
                                 "mysql://bob:s3cret@127.0.0.1/db"])
def test_a_bad_connection_string_is_one_clear_line(url, capsys):
    from crossrank.front.cli import main

    assert main(["search", "--store", url, "--embedder", "unused", "a query"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "s3cret" not in err and "bob:***@" in err, err
    assert re.search(r"cannot connect|not accepted|scheme", err), err


# -- lexical and hybrid ------------------------------------------------------------------------

def test_reciprocal_rank_fusion():
    a = Candidates(["x", "y", "z"], np.ones(3, np.float32), ["X", "Y", "Z"])
    b = Candidates(["z", "w"], np.ones(2, np.float32), ["Z", "W"])
    fused = fuse([a, b], k=3, rrf_k=60)
    assert fused.ids == ["z", "x", "y"] and fused.documents == ["Z", "X", "Y"]
    np.testing.assert_allclose(fused.scores, [1 / 63 + 1 / 61, 1 / 61, 1 / 62], rtol=1e-6)


def test_hybrid_over_pgvector_and_over_the_index_with_bm25(pg_store, index, embedder, queries, tmp_path):
    from crossrank.stores.bm25 import BM25Retriever

    texts, query_vectors = queries
    path = tmp_path / "index"
    index.save(path)
    BM25Retriever.build(index).save(path)
    loaded = Index.load(path, view=True, embedder=embedder)
    for dense, lexical in ((pg_store, pg_store.lexical()), (loaded, BM25Retriever.load(path, loaded))):
        hybrid = Hybrid(dense, lexical)
        words = lexical.retrieve_many(texts[:6], None, 20)
        assert sum(len(c.ids) for c in words) > 0
        for c in words:
            assert list(c.scores) == sorted(c.scores, reverse=True) and all(s > 0 for s in c.scores)
        fused = hybrid.retrieve_many(texts[:6], query_vectors[:6], 20)
        dense_found = dense.retrieve_many(texts[:6], query_vectors[:6], 20)
        for f, d, w in zip(fused, dense_found, words):
            assert f.ids == fuse([d, w], 20).ids
        result = Pipeline(embedder, hybrid).search(texts[0], k=20, top_n=5)  # a first stage like any other
        assert result.ids == fused[0].ids[:5]
    index.save(path)  # a new generation: the BM25 beside it is stale and refused
    with pytest.raises(Exception, match="rebuild it"):
        BM25Retriever.load(path, Index.load(path, view=True))


def test_cli_builds_and_searches_a_pgvector_table(postgres, bi_fp32, corpus, tmp_path, capsys):
    from crossrank.front.cli import main

    rows = tmp_path / "corpus.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(*[x[:40] for x in corpus])))
    assert main(["index", "build", "--embedder", str(bi_fp32), "--corpus", str(rows), "--store", postgres,
                 "--table", "cli_docs", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "40 documents" in out and "cli_docs" in out
    assert main(["index", "build", "--embedder", str(bi_fp32), "--corpus", str(rows), "--store", postgres,
                 "--table", "cli_docs", "--no-progress"]) == 2  # exists: --force to replace
    assert "--force" in capsys.readouterr().err
    assert main(["search", "--store", postgres, "--table", "cli_docs", "--hybrid", "--json", corpus[1][3][:60]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hits"][0]["id"] == corpus[0][3]


def test_serve_answers_v1_search_from_a_store(pg_store, postgres, embedder, bi_fp32, tmp_path):
    """crossrank serve --store (a real process on 127.0.0.1): /v1/search gives the Pipeline's hits;
    the password in the URL (ignored by the socket's trust auth) shows nowhere."""
    import httpx
    from test_serve import Server

    with_password = postgres.replace("postgres:@", "postgres:s3cret@")
    server = Server(["--embedder", str(bi_fp32), "--store", with_password, "--table", "semanlink", "--hybrid"],
                    tmp_path / "serve.log")
    try:
        query = "knowledge graph embeddings"
        body = server.post("/v1/search", {"query": query, "k": 20, "top_n": 5}).json()
        assert [h["id"] for h in body["hits"]] == Pipeline(embedder, pg_store.hybrid()).search(query, k=20, top_n=5).ids
        info = httpx.get(server.url + "/info", timeout=30).json()
        assert info["index"]["documents"] == len(pg_store) and info["index"]["id"] == "postgresql table semanlink (hybrid)"
        assert "s3cret" not in json.dumps(info) and "s3cret" not in server.log()
    finally:
        server.stop()
