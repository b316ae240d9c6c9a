"""crossrank.Index on real data: 240 Semanlink documents embedded by the exported MiniLM.

Every search figure is checked against numpy brute force over the same vectors.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from crossrank.evaluation.datasets import load_semanlink, semanlink_queries
from crossrank.index import EmbedderMismatchError, Index, IndexFormatError
from crossrank.index_files import DOCUMENTS, MANIFEST, POINTER, VECTORS

N_DOCS = 240
N_ADDED = 40  # of the 240, held back to test add()


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
def reference_vectors(embedder, corpus):
    """The corpus embedded in one plain call, independent of Index.build's batching."""
    return embedder.embed(corpus[1])


@pytest.fixture(scope="module")
def query_texts():
    return [q.text for q in semanlink_queries("test")[:60]]


@pytest.fixture(scope="module")
def query_vectors(embedder, query_texts):
    return embedder.embed(query_texts)


@pytest.fixture(scope="module")
def index(embedder, corpus):
    """f32 index built the normal way: Index.build embeds the documents itself."""
    ids, texts = corpus
    return Index.build(embedder, texts, ids, dtype="f32", batch_size=64, progress=False)


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "index"
    index.save(path)
    return path


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


# -- build, ids, vectors ------------------------------------------------------------------------

def test_build_keeps_each_id_with_its_own_vector(index, corpus, reference_vectors):
    ids, texts = corpus
    assert len(index) == N_DOCS and index.dim == 384 and index.ids() == ids
    stored = index.get_vectors(ids)
    # Build embeds shortest first in batches of 64; a row mix-up would give cosines near 0.3.
    assert np.abs(stored - reference_vectors).max() < 1e-4
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    assert index.get_documents(ids[::-1]) == texts[::-1]


def test_default_ids_are_positions_and_continue_on_add(embedder, corpus, reference_vectors):
    _, texts = corpus
    index = Index.build(embedder, texts[:5], dtype="f32", progress=False, vectors=reference_vectors[:5])
    assert index.ids() == [0, 1, 2, 3, 4]
    assert index.add(texts[5:8], vectors=reference_vectors[5:8]) == [5, 6, 7]
    index.remove([7])
    assert index.add(texts[8:9], vectors=reference_vectors[8:9]) == [8]  # keys are never reused
    assert index.get_documents([8, 0]) == [texts[8], texts[0]]


def test_exact_search_equals_numpy_brute_force(index, corpus, query_texts, query_vectors, reference_vectors):
    ids, _ = corpus
    stored = index.get_vectors(ids)
    for text, vector in zip(query_texts, query_vectors):
        found, similarities = index.search(vector, k=10, exact=True)
        order, scores = brute_force(stored, vector, 10)
        assert found == [ids[i] for i in order], text
        assert np.allclose(similarities, scores, atol=1e-5)
    # a text query is embedded by the index's embedder: same answer as its vector
    text_hits = index.search(query_texts[0], k=10, exact=True)
    vector_hits = index.search(query_vectors[0], k=10, exact=True)
    assert text_hits.ids == vector_hits.ids
    assert np.allclose(text_hits.similarities, vector_hits.similarities, atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [("f16", 2e-3), ("i8", 2e-2)])
def test_quantized_exact_search_matches_numpy_on_stored_vectors(embedder, corpus, reference_vectors,
                                                                query_vectors, dtype, atol):
    ids, texts = corpus
    index = Index.build(embedder, texts, ids, dtype=dtype, progress=False, vectors=reference_vectors)
    stored = index.get_vectors(ids)
    rounding = np.abs(stored - reference_vectors).max()
    assert 0 < rounding < (1e-3 if dtype == "f16" else 0.05)  # really stored at lower precision
    for vector in query_vectors[:20]:
        found, similarities = index.search(vector, k=10, exact=True)
        # the similarity reported for each id is numpy's for that id's vector ...
        truth = reference_vectors[[ids.index(i) for i in found]] @ vector
        assert np.allclose(similarities, truth, atol=atol)
        # ... and the k best similarities are numpy's k best (ties may swap ids)
        _, best = brute_force(reference_vectors, vector, 10)
        assert np.allclose(similarities, best, atol=atol)


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_hnsw_recall_against_exact_at_default_settings(embedder, corpus, reference_vectors, query_vectors, dtype):
    ids, texts = corpus
    index = Index.build(embedder, texts, ids, dtype=dtype, progress=False, vectors=reference_vectors)
    approx = index.search_many(query_vectors, k=10)
    exact = index.search_many(query_vectors, k=10, exact=True)
    recall = np.mean([len(set(a.ids) & set(e.ids)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.99, f"{dtype}: HNSW recall@10 {recall:.4f} against exact search"


def test_search_many_equals_search(index, query_texts):
    many = index.search_many(query_texts[:8], k=15)
    for text, hits in zip(query_texts[:8], many):
        single = index.search(text, k=15)
        assert hits.ids == single.ids
        assert np.allclose(hits.similarities, single.similarities, atol=1e-5)


def test_k_larger_than_the_index_returns_everything_sorted(index, query_vectors):
    found, similarities = index.search(query_vectors[0], k=10_000)
    assert len(found) == N_DOCS and len(set(found)) == N_DOCS
    assert np.all(np.diff(similarities) <= 1e-6)


# -- add / remove ---------------------------------------------------------------------------------

def test_add_then_remove(embedder, corpus, reference_vectors):
    ids, texts = corpus
    base = N_DOCS - N_ADDED
    index = Index.build(embedder, texts[:base], ids[:base], dtype="f32", progress=False,
                        vectors=reference_vectors[:base])
    added = index.add(texts[base:], ids[base:], batch_size=16)  # embedded by the index's embedder
    assert added == ids[base:] and len(index) == N_DOCS
    assert np.abs(index.get_vectors(ids[base:]) - reference_vectors[base:]).max() < 1e-4
    # each added document is its own nearest neighbour
    for i in range(base, N_DOCS):
        found, sims = index.search(reference_vectors[i], k=1)
        assert found == [ids[i]] and abs(sims[0] - 1.0) < 1e-5

    gone = ids[base: base + 10]
    assert index.remove(gone) == 10 and len(index) == N_DOCS - 10
    for i in range(base, base + 10):
        found, _ = index.search(reference_vectors[i], k=20, exact=True)
        assert ids[i] not in found
        assert ids[i] not in index
    with pytest.raises(KeyError, match="not in the index"):
        index.get_documents([gone[0]])
    # exact search after removal still equals brute force over what is left
    kept = [i for i in range(N_DOCS) if ids[i] not in set(gone)]
    order, scores = brute_force(reference_vectors[kept], reference_vectors[0], 10)
    found, sims = index.search(reference_vectors[0], k=10, exact=True)
    assert found == [ids[kept[i]] for i in order] and np.allclose(sims, scores, atol=1e-5)


def test_add_and_remove_errors_change_nothing(embedder, corpus, reference_vectors):
    ids, texts = corpus
    index = Index.build(embedder, texts[:20], ids[:20], dtype="f32", progress=False, vectors=reference_vectors[:20])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(texts[20:22], [ids[20], ids[3]], vectors=reference_vectors[20:22])
    assert len(index) == 20 and ids[20] not in index
    with pytest.raises(ValueError, match="appears twice"):
        index.add(texts[20:22], ["x", "x"], vectors=reference_vectors[20:22])
    with pytest.raises(KeyError, match="no-such-id"):
        index.remove([ids[0], "no-such-id"])
    assert len(index) == 20 and ids[0] in index
    with pytest.raises(ValueError, match=r"2 ids for 3 documents"):
        index.add(texts[20:23], ["a", "b"])
    with pytest.raises(TypeError, match=r"ids\[1\] must be a str or an int, got float"):
        index.add(texts[20:22], ["a", 1.5])
    with pytest.raises(ValueError, match=r"shape \(2, 383\); expected \(2, 384\)"):
        index.add(texts[20:22], ["a", "b"], vectors=reference_vectors[20:22, :383])
    assert len(index) == 20


def test_build_and_search_argument_errors(embedder, index, corpus):
    ids, texts = corpus
    with pytest.raises(ValueError, match=r"dtype 'f64' is not one of \('f32', 'f16', 'i8'\)"):
        Index.build(embedder, texts[:3], dtype="f64", progress=False)
    with pytest.raises(ValueError, match="metric 'l2' is not one of"):
        Index.build(embedder, texts[:3], metric="l2", progress=False)
    # usearch needs 2 edges per node at least: 1 is refused too, before usearch (issue 19)
    with pytest.raises(ValueError, match="connectivity must be an integer >= 2"):
        Index.build(embedder, texts[:3], connectivity=0, progress=False)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        index.search("anything", k=0)
    with pytest.raises(ValueError, match=r"shape \(128,\); this index holds 384-dim"):
        index.search(np.zeros(128, dtype=np.float32), k=3)
    with pytest.raises(TypeError, match=r"documents\[1\] must be a str"):
        Index.build(embedder, ["fine", None], progress=False)


# -- save / load / view ---------------------------------------------------------------------------

def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""


def test_save_load_roundtrip(saved, index, embedder, corpus, query_vectors):
    ids, texts = corpus
    assert sorted(p.name for p in saved.iterdir()) == [POINTER, "gen-000001"]
    for view in (True, False):
        loaded = Index.load(saved, view=view, embedder=embedder)
        assert (len(loaded), loaded.dim, loaded.dtype, loaded.view) == (N_DOCS, 384, "f32", view)
        assert loaded.ids() == ids and loaded.get_documents(ids[:5]) == texts[:5]
        assert loaded.expansion_search == index.expansion_search
        for vector in query_vectors[:10]:
            a, b = loaded.search(vector, k=20), index.search(vector, k=20)
            assert a.ids == b.ids and np.array_equal(a.similarities, b.similarities)
    if _mapped_files():  # Linux: view=True maps the vectors file instead of reading it in
        viewed = Index.load(saved, view=True)
        assert str((saved / "gen-000001" / VECTORS).resolve()) in _mapped_files()
        assert len(viewed) == N_DOCS


def test_view_is_read_only_and_memory_copy_is_private(saved, corpus, reference_vectors):
    ids, texts = corpus
    viewed = Index.load(saved, view=True)
    with pytest.raises(RuntimeError, match="view=True"):
        viewed.add(["new text"], ["new"], vectors=reference_vectors[:1])
    with pytest.raises(RuntimeError, match="view=True"):
        viewed.remove([ids[0]])
    private = Index.load(saved, view=False)
    private.add(["new text"], ["new"], vectors=reference_vectors[:1])
    private.remove([ids[1]])
    assert len(private) == N_DOCS and "new" in private
    again = Index.load(saved, view=True)
    assert len(again) == N_DOCS and "new" not in again and ids[1] in again  # saved files untouched


def test_text_query_without_embedder_is_a_clear_error(saved, query_vectors, embedder):
    loaded = Index.load(saved)
    assert len(loaded.search(query_vectors[0], k=3).ids) == 3  # vectors work without one
    with pytest.raises(RuntimeError, match=r"pass embedder= to Index.load .*built by the artifact at"):
        loaded.search("semantic web", k=3)


def test_resave_switches_generation_and_cleans_up(index, corpus, reference_vectors, tmp_path, embedder):
    ids, texts = corpus
    path = tmp_path / "ix"
    index.save(path)
    copy = Index.load(path, view=False, embedder=embedder)
    copy.add(["one more"], ["extra"], vectors=reference_vectors[:1])
    copy.save(path)
    assert sorted(p.name for p in path.iterdir()) == [POINTER, "gen-000002"]
    reloaded = Index.load(path, embedder=embedder)
    assert len(reloaded) == N_DOCS + 1 and reloaded.get_documents(["extra"]) == ["one more"]
    # a view can be saved elsewhere (usearch writes from the mapping)
    reloaded.save(tmp_path / "copy")
    assert Index.load(tmp_path / "copy").ids() == reloaded.ids()


def test_paths_with_spaces_and_uri_characters(index, tmp_path, corpus):
    path = tmp_path / "my index #1?" / "v 2"
    index.save(path)
    loaded = Index.load(path, view=True)
    assert loaded.ids() == corpus[0] and loaded.get_documents(corpus[0][:2]) == corpus[1][:2]


def test_save_refuses_a_folder_that_is_not_an_index(index, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no crossrank index"):
        index.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


# -- atomic save: kill a child process mid-save ---------------------------------------------------

CHILD = r"""
import json, sys, time
import numpy as np
import crossrank.index as index_module
import crossrank.index_files as files_module
from crossrank.index import Index

path, extra, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
step = 0

def hooked(original):
    def wrapper(target):
        global step
        original(target)
        step += 1
        print(f"STEP {step} {target}", flush=True)
        if step == stop_at:
            time.sleep(600)
    return wrapper

index_module.fsync_file = hooked(index_module.fsync_file)
index_module.fsync_dir = hooked(index_module.fsync_dir)
files_module.fsync_dir = hooked(files_module.fsync_dir)
rows = json.load(open(extra + ".json"))
index = Index.load(path, view=False)
index.add(rows["texts"], rows["ids"], vectors=np.load(extra + ".npy"))
print("SAVING", flush=True)
rounds = 0
while True:
    index.save(path)
    rounds += 1
    print(f"SAVED {rounds}", flush=True)
    if stop_at >= 0:
        break
"""


def _start_child(path: Path, extra: Path, stop_at: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(extra), str(stop_at)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(child: subprocess.Popen, prefix: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = child.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and child.poll() is not None:
            raise AssertionError(f"child exited {child.returncode}: {child.stderr.read()[-2000:]}")
    raise AssertionError(f"child never printed {prefix!r}")


@pytest.fixture()
def two_versions(embedder, corpus, reference_vectors, tmp_path):
    """An index of 200 documents saved at DIR, and the 40 more that the child adds before saving."""
    ids, texts = corpus
    base = N_DOCS - N_ADDED
    old = Index.build(embedder, texts[:base], ids[:base], dtype="f16", progress=False,
                      vectors=reference_vectors[:base])
    path = tmp_path / "ix"
    old.save(path)
    extra = tmp_path / "extra"
    (tmp_path / "extra.json").write_text(json.dumps({"ids": ids[base:], "texts": texts[base:]}))
    np.save(tmp_path / "extra.npy", reference_vectors[base:])
    new = Index.build(embedder, texts, ids, dtype="f16", progress=False, vectors=reference_vectors)
    queries = reference_vectors[:30]
    expected = {len(old): old.search_many(queries, k=10, exact=True),
                len(new): new.search_many(queries, k=10, exact=True)}
    return path, extra, expected


def _assert_whole(path: Path, expected: dict, queries: np.ndarray) -> int:
    """Load with full checksums and compare exact search with the version of that size."""
    loaded = Index.load(path, view=True, verify=True)
    assert len(loaded) in expected, f"{len(loaded)} documents: neither version"
    for hits, want in zip(loaded.search_many(queries, k=10, exact=True), expected[len(loaded)]):
        assert hits.ids == want.ids and np.array_equal(hits.similarities, want.similarities)
    return len(loaded)


# fsync order in a save: 1 vectors, 2 documents, 3 manifest, 4 staging folder, 5 DIR after the
# rename to gen-2, 6 DIR after CURRENT was replaced (the commit point). The parent's next save
# takes the next free generation number.
@pytest.mark.parametrize("stop_at, survivor, next_generation", [
    (1, "old", "gen-000002"), (2, "old", "gen-000002"), (3, "old", "gen-000002"),
    (4, "old", "gen-000002"), (5, "old", "gen-000003"), (6, "new", "gen-000003")])
def test_killed_mid_save_leaves_a_whole_index(two_versions, reference_vectors, stop_at, survivor,
                                              next_generation):
    path, extra, expected = two_versions
    base = N_DOCS - N_ADDED
    child = _start_child(path, extra, stop_at)
    try:
        _wait_for(child, f"STEP {stop_at} ")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    count = _assert_whole(path, expected, reference_vectors[:30])
    assert count == (base if survivor == "old" else N_DOCS)
    # the dead saver's leftovers go away at the next save; the index stays whole
    Index.load(path, view=False).save(path)
    assert sorted(p.name for p in path.iterdir()) == [POINTER, next_generation]
    assert _assert_whole(path, expected, reference_vectors[:30]) == count


def test_killed_at_random_moments_of_repeated_saves(two_versions, reference_vectors):
    path, extra, expected = two_versions
    base = N_DOCS - N_ADDED
    rng = random.Random(4)
    child = _start_child(path, extra, -1)  # saves in a loop until killed
    try:
        _wait_for(child, "SAVING")
        for _ in range(5):
            time.sleep(rng.uniform(0.0, 0.08))
            child.send_signal(signal.SIGSTOP)  # freeze it wherever it is, check, then let it go on
            assert _assert_whole(path, expected, reference_vectors[:30]) in (base, N_DOCS)
            child.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.08))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert _assert_whole(path, expected, reference_vectors[:30]) in (base, N_DOCS)


# -- mismatch and corruption ----------------------------------------------------------------------

def test_load_with_another_embedder_is_refused(saved, bi_int8, bi_fp32, embedder):
    from crossrank.embedder import Embedder

    other = Embedder(bi_int8)
    with pytest.raises(EmbedderMismatchError) as err:
        Index.load(saved, embedder=other)
    message = str(err.value)
    assert str(bi_fp32) in message and str(bi_int8) in message
    assert embedder.artifact.sha256[:16] in message and other.artifact.sha256[:16] in message
    wider = SimpleNamespace(artifact=embedder.artifact, dim=768)  # same model, other dimension
    with pytest.raises(EmbedderMismatchError, match="holds 384-dim vectors .* makes 768-dim vectors"):
        Index.load(saved, embedder=wider)


@pytest.fixture()
def damaged(saved, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    return copy


def _generation(path: Path) -> Path:
    return path / (path / POINTER).read_text().strip()


def test_truncated_vectors_file_names_the_file(damaged):
    vectors = _generation(damaged) / VECTORS
    with open(vectors, "r+b") as handle:
        handle.truncate(vectors.stat().st_size // 2)
    for verify in (True, False):
        with pytest.raises(IndexFormatError, match=f"{vectors}.*truncated or corrupted"):
            Index.load(damaged, verify=verify)
    # even if the manifest agreed with the short size, usearch's own check is reported with the file
    manifest = json.loads((_generation(damaged) / MANIFEST).read_text())
    manifest["files"][VECTORS]["bytes"] = vectors.stat().st_size
    (_generation(damaged) / MANIFEST).write_text(json.dumps(manifest))
    for view in (True, False):
        with pytest.raises(IndexFormatError, match=f"{vectors}"):
            Index.load(damaged, view=view, verify=False)


def test_flipped_bytes_are_caught_by_the_checksum(damaged):
    vectors = _generation(damaged) / VECTORS
    data = bytearray(vectors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{vectors}.*sha256"):
        Index.load(damaged)


def test_corrupted_document_store_names_the_file(damaged):
    documents = _generation(damaged) / DOCUMENTS
    data = bytearray(documents.read_bytes())
    data[:16] = b"not a database!!"
    documents.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{documents}.*sha256"):
        Index.load(damaged)
    with pytest.raises(IndexFormatError, match=f"document store '{documents}' is unreadable"):
        Index.load(damaged, verify=False)


def test_broken_folder_layout_errors(damaged, tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.load(tmp_path / "nowhere")
    (damaged / POINTER).write_text("../../etc\n")
    with pytest.raises(IndexFormatError, match=f"{damaged / POINTER}.*not a generation name"):
        Index.load(damaged)
    (damaged / POINTER).write_text("gen-000001\n")
    (damaged / "gen-000001" / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match=f"{damaged / 'gen-000001' / MANIFEST}.*not valid JSON"):
        Index.load(damaged)
    (damaged / POINTER).unlink()
    with pytest.raises(IndexFormatError, match=f"no {POINTER} file"):
        Index.load(damaged)
    assert os.path.isdir(damaged)
