"""No data loss, no crash, no silently wrong answer: one regression test per defect found by hostile use
(the hardening issue), plus the usearch/onnxruntime import-order crash found while fixing them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import crossrank
from crossrank.errors import (ArgumentTypeError, ArtifactError, IndexFormatError, InvalidArgumentError,
                              OutputExistsError)
from crossrank.export import export_model
from crossrank.export.output import check_output, clean_stale
from crossrank.export.source import SourceError
from crossrank.front.cli import main
from crossrank.index import Index

ROOT = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    """The id of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def no_export_work(monkeypatch):
    """Fails the test if an export gets as far as its first (slow) stage."""
    import crossrank.export as export

    def refuse(*args, **kwargs):
        raise AssertionError("the export started working before its output was checked")

    monkeypatch.setattr(export, "_export_raw_onnx", refuse)


# -- 1. export --force: never the source, never a foreign folder; atomic replacement ------------------

def test_export_force_never_touches_the_source_or_a_folder_it_did_not_make(tiny_cross_src, tmp_path, no_export_work):
    src = tmp_path / "model"
    shutil.copytree(tiny_cross_src, src)
    before = tree(src)
    for out in (src, src / "artifact", tmp_path):  # SRC itself, inside it, above it
        with pytest.raises(OutputExistsError, match="source folder"):
            export_model(src, out, kind="cross", force=True, quiet=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    with pytest.raises(OutputExistsError, match="not a crossrank artifact"):
        export_model(src, foreign, kind="cross", force=True, quiet=True)
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    with pytest.raises(OutputExistsError, match="is a file"):
        export_model(src, a_file, kind="cross", force=True, quiet=True)
    assert tree(src) == before and (foreign / "notes.txt").read_text() == "my notes" and a_file.read_text() == "keep me"


def test_export_force_replaces_an_artifact_atomically_and_only_a_pure_one(tiny_cross, tiny_cross_src, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "artifact"
    shutil.copytree(tiny_cross, out)
    (out / "runtime.json").write_text('{"format": 1}')  # crossrank's own (crossrank tune): may go
    (out / "certificates.json").write_text('{"format": 1}')  # crossrank's own (crossrank certify): may go
    old = (out / "manifest.json").read_text()
    # A crash between "old artifact aside" and "new one in" leaves the old one restorable ...
    real_rename = os.rename
    calls = []

    def crash_on_second_rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_cross_src, out, kind="cross", force=True, quiet=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert (out / "manifest.json").read_text() == old  # rolled back in place
    # ... and a replacement whose process died mid-way is restored by the next export of OUT.
    aside = tmp_path / f".artifact.old-{dead_pid()}"
    out.rename(aside)
    clean_stale(out)
    assert (out / "manifest.json").read_text() == old and not aside.exists()
    manifest = export_model(tiny_cross_src, out, kind="cross", force=True, quiet=True)
    assert json.loads((out / "manifest.json").read_text())["created"] == manifest["created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # nothing left aside
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="my-notes.txt"):
        check_output(out, tiny_cross_src, force=True)


# -- 3. partial folders of killed exports -------------------------------------------------------------

def test_stale_partial_folders_of_dead_exports_are_removed(tmp_path):
    out = tmp_path / "artifact"
    dead = tmp_path / f".artifact.partial-{dead_pid()}"
    live = tmp_path / f".artifact.partial-{os.getppid()}"  # a running process: maybe exporting right now
    other = tmp_path / f".other.partial-{dead_pid()}"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x" * 1000)
    assert clean_stale(out) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


# -- 2. concurrent saves of one index -----------------------------------------------------------------

SAVER = textwrap.dedent("""
    import sys
    import crossrank
    index = crossrank.Index.load(sys.argv[1], view=False)
    for _ in range(int(sys.argv[2])):
        index.save(sys.argv[1])
""")
LOADER = textwrap.dedent("""
    import sys, time
    import crossrank
    failures, loads, stop = [], 0, time.time() + 120
    while time.time() < stop:
        try:
            crossrank.Index.load(sys.argv[1]).search_vectors(__import__("numpy").ones((1, 8), "float32"), 3)
            loads += 1
        except Exception as err:
            failures.append(repr(err))
        if open(sys.argv[2]).read() == "done":
            break
    print(loads, len(failures), failures[:3])
""")


def small_index(n: int = 40, dim: int = 8, seed: int = 0) -> Index:
    """An index of n random unit vectors, no embedder (saves and loads never need one)."""
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedder = type("Stub", (), {"dim": dim, "artifact": type("A", (), {"sha256": "0" * 64, "path": Path("stub"),
                                                                         "manifest": {}})()})()
    return Index.build(embedder, [f"document {i}" for i in range(n)], vectors=vectors, progress=False)


def test_two_processes_saving_while_a_third_loads(tmp_path):
    path, flag = tmp_path / "index", tmp_path / "flag"
    small_index().save(path)
    flag.write_text("")
    loader = subprocess.Popen([sys.executable, "-c", LOADER, str(path), str(flag)], stdout=subprocess.PIPE, text=True)
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, str(path), "100"]) for _ in range(2)]
    assert [s.wait(timeout=300) for s in savers] == [0, 0]
    flag.write_text("done")
    loads, failures, examples = loader.communicate(timeout=300)[0].split(" ", 2)
    assert int(failures) == 0, examples
    assert int(loads) > 0
    generations = sorted(p.name for p in path.iterdir() if p.name.startswith("gen-"))
    assert generations == [(path / "CURRENT").read_text().strip()]  # clean-up kept exactly the live one
    assert len(Index.load(path)) == 40


# -- 4. a damaged vectors file never crashes the process -----------------------------------------------

CORRUPT = textwrap.dedent("""
    import random, shutil, sys
    from pathlib import Path
    import crossrank
    from crossrank.errors import IndexFormatError
    src, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    rng = random.Random(0)
    refused = 0
    for trial in range(30):
        copy = scratch / f"copy{trial}"
        shutil.copytree(src, copy)
        vectors = next(copy.glob("gen-*/vectors.usearch"))
        data = bytearray(vectors.read_bytes())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        vectors.write_bytes(bytes(data))
        try:
            crossrank.Index.load(copy)
        except IndexFormatError:
            refused += 1
        shutil.rmtree(copy)
    print(refused)
""")


def test_damaged_vectors_are_refused_never_a_crash(tmp_path):
    path = tmp_path / "index"
    small_index(n=200).save(path)
    run = subprocess.run([sys.executable, "-c", CORRUPT, str(path), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, f"exit {run.returncode} (negative: killed by a signal): {run.stderr[-2000:]}"
    assert int(run.stdout) == 30  # every corruption is caught by the sha256 check before usearch reads it


def test_verify_false_still_checks_sizes_and_the_header(tmp_path):
    path, other = tmp_path / "index", tmp_path / "other"
    small_index(n=40).save(path)
    small_index(n=41, seed=1).save(other)
    vectors = next(path.glob("gen-*/vectors.usearch"))
    shutil.copy(next(other.glob("gen-*/vectors.usearch")), vectors)  # a whole file, of another index
    with pytest.raises(IndexFormatError, match="bytes, the manifest says|header"):
        Index.load(path, verify=False)
    manifest_path = next(path.glob("gen-*/index.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["vectors.usearch"]["bytes"] = vectors.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="header says"):
        Index.load(path, verify=False)


# -- 5. searches beside a writer ---------------------------------------------------------------------

def test_searches_beside_one_writer_never_fail(tmp_path):
    dim = 8
    index = small_index(n=300, dim=dim)
    rng = np.random.default_rng(1)
    errors, searches, stop = [], [0], time.time() + 4
    pipeline_like = []

    def writer():
        next_id = 10_000
        while time.time() < stop:
            vectors = rng.normal(size=(20, dim)).astype(np.float32)
            ids = list(range(next_id, next_id + 20))
            index.add([f"new {i}" for i in ids], ids, vectors=vectors)
            index.remove(ids)
            next_id += 20

    def searcher():
        query = np.ones((2, dim), dtype=np.float32)
        while time.time() < stop:
            try:
                with index.reading():
                    hits = index.search_vectors(query, 50)
                    texts = index.fetch_documents(hits)
                assert all(len(t) == len(h.ids) for t, h in zip(texts, hits))
                searches[0] += 1
            except Exception as err:  # noqa: BLE001 - every failure counts
                errors.append(repr(err))

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert searches[0] > 10 and len(index) == 300 and not pipeline_like


# -- 6. one rule for ids ------------------------------------------------------------------------------

def test_one_rule_for_ids():
    index = small_index(n=10)
    assert np.int64(5) in index and 5 in index and "5" not in index
    assert index.get_documents([np.int64(5)]) == ["document 5"]
    for call in (lambda: 5.0 in index, lambda: index.remove([5.0]), lambda: index.get_documents([5.0]),
                 lambda: index.add(["x"], ids=[7.5], vectors=np.ones((1, 8), np.float32))):
        with pytest.raises(TypeError, match="must be a str or an int, got float"):
            call()
    assert len(index) == 10 and 5 in index  # nothing removed by the refused call
    assert index.remove(np.int64(5)) == 1 and 5 not in index


# -- 7. manifests are validated ------------------------------------------------------------------------

def edited(artifact: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("change, message", [
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), r"'files' file name '\.\./\.\./etc/passwd'"),
    (lambda m: m["files"].update({"/etc/passwd": "0" * 64}), r"'files' file name '/etc/passwd'"),
    (lambda m: m.pop("activation"), r"'activation' = None is not one of"),
    (lambda m: m.update(max_length=4096), r"'max_length' 4096 exceeds the 512 positions"),
    (lambda m: m.update(kind="bi", output="embeddings", dim=384), r"holds a 'bi' model"),
    (lambda m: m.update(activaton="sigmoid"), r"unknown key 'activaton'"),
    (lambda m: m.update(files={}), r"'files' must be a non-empty object"),
    (lambda m: m.update(max_length="512"), r"'max_length' must be an integer"),
])
def test_artifact_manifest_is_validated(cross_fp32, tmp_path, change, message):
    with pytest.raises(ArtifactError, match=message):
        crossrank.Reranker(edited(cross_fp32, tmp_path, change))


def test_graph_and_manifest_must_agree(bi_fp32, tmp_path):
    with pytest.raises(ArtifactError, match=r"'dim' 128 but the graph returns embeddings of shape"):
        crossrank.Embedder(edited(bi_fp32, tmp_path, lambda m: m.update(dim=128)))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(files={}), "must list exactly"),
    (lambda m: m["files"].update({"../x": m["files"].pop("documents.sqlite")}), "must list exactly"),
    (lambda m: m.update(dim=16), "is inconsistent"),
    (lambda m: m.update(count="40"), "'count' must be an integer"),
    (lambda m: m.update(extra=1), "unknown key 'extra'"),
])
def test_index_manifest_is_validated(tmp_path, change, message):
    path = tmp_path / "index"
    small_index().save(path)
    manifest_path = next(path.glob("gen-*/index.json"))
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=message):
        Index.load(path)


# -- 8. same input, same answer -------------------------------------------------------------------------

def test_nan_vectors_and_empty_queries_are_refused_everywhere():
    index = small_index()
    query = np.ones(8, dtype=np.float32)
    query[3] = np.nan
    with pytest.raises(InvalidArgumentError, match="nan or inf"):
        index.search(query)
    with pytest.raises(InvalidArgumentError, match="nan or inf"):
        index.add(["x"], vectors=query.reshape(1, 8))
    for empty in ("", "   "):
        with pytest.raises(InvalidArgumentError, match="query is empty"):
            index.search(empty)


# -- 9. CLI failures: one line, before the work ----------------------------------------------------------

def test_cli_failures_are_one_line_and_come_first(tiny_cross_src, tmp_path, capsys, no_export_work):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["export", str(tiny_cross_src), str(a_file), "--kind", "cross", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err
    assert main(["index", "build", "--embedder", "nowhere", "--semanlink", "--out", "/dev/null/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'/dev/null' is not a folder" in err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_cross_src, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["num_attention_heads"]
    (broken / "config.json").write_text(json.dumps(config))
    assert main(["export", str(broken), str(tmp_path / "out"), "--kind", "cross"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'num_attention_heads' must be a positive integer" in err
    with pytest.raises(SourceError):
        main(["--debug", "export", str(broken), str(tmp_path / "out"), "--kind", "cross"])


def test_cli_unexpected_errors_are_one_line_with_the_way_to_the_traceback(monkeypatch, capsys, tmp_path):
    import crossrank.front.cli as cli

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "load_artifact", boom)
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError: a bug" in err and "--debug" in err
    monkeypatch.setenv("CROSSRANK_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info", str(tmp_path)])


# -- 10. options --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, error, message", [
    ({"batch_tokens": 0}, InvalidArgumentError, r"batch_tokens must be an integer in \[16, 4194304\] or None, got 0"),
    ({"batch_tokens": 1.5}, ArgumentTypeError, "batch_tokens must be an integer .* got float 1.5"),
    ({"threads": True}, ArgumentTypeError, "threads must be an integer .* got bool True"),
    ({"threads": 2 ** 40}, InvalidArgumentError, r"threads must be an integer in \[1, 1024\]"),
    ({"io_binding": "yes"}, ArgumentTypeError, "io_binding must be True or False or None, got str 'yes'"),
    ({"max_length": 100.5}, ArgumentTypeError, "max_length must be an integer .* got float 100.5"),
    ({"long_documents": "split"}, InvalidArgumentError, "long_documents 'split' is not one of"),
    ({"device": "gpu"}, InvalidArgumentError, "device 'gpu' is not one of"),
])
def test_reranker_options_are_checked(tiny_cross, options, error, message):
    with pytest.raises(error, match=message):
        crossrank.Reranker(tiny_cross, **options)


def test_a_lone_surrogate_is_named_with_its_position(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross)
    with pytest.raises(InvalidArgumentError, match=r"documents\[1\] is not valid Unicode: a lone surrogate .* at character 4"):
        reranker.rerank("query", ["fine", "bad \ud800 text"])
    with pytest.raises(InvalidArgumentError, match=r"query is not valid Unicode"):
        reranker.rerank("q\udfff", ["fine"])


# -- 11. the index finds its embedder from anywhere ---------------------------------------------------------

def test_index_finds_its_embedder_from_any_folder(bi_fp32, tmp_path, monkeypatch):
    build_dir, elsewhere = tmp_path / "a", tmp_path / "b"
    build_dir.mkdir()
    elsewhere.mkdir()
    shutil.copytree(bi_fp32, build_dir / "embedder")
    corpus = build_dir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": f"text about topic {i}"}) + "\n" for i in range(20)))
    monkeypatch.chdir(build_dir)
    assert main(["index", "build", "--embedder", "embedder", "--corpus", "corpus.jsonl", "--out", "index",
                 "--no-progress"]) == 0
    monkeypatch.chdir(elsewhere)
    assert main(["search", "--index", str(build_dir / "index"), "--json", "topic 3"]) == 0
    # moved together to another place: found next to the index
    moved = tmp_path / "moved"
    shutil.move(str(build_dir), moved)
    assert main(["search", "--index", str(moved / "index"), "--json", "topic 3"]) == 0
    shutil.rmtree(moved / "embedder")
    assert main(["search", "--index", str(moved / "index"), "topic 3"]) == 2


# -- found on the way: usearch before onnxruntime crashes onnxruntime ---------------------------------------

def test_import_order_of_usearch_and_onnxruntime(bi_fp32):
    inside = subprocess.run([sys.executable, "-c", f"import crossrank.index, crossrank; "
                             f"print(crossrank.Embedder({str(bi_fp32)!r}).embed(['x']).shape)"],
                            capture_output=True, text=True)
    assert inside.returncode == 0 and "(1, 384)" in inside.stdout, inside.stderr
    warned = subprocess.run([sys.executable, "-c", "import usearch, crossrank"], capture_output=True, text=True)
    assert "usearch was imported before onnxruntime" in warned.stderr


# -- hostile use of the library: every failure a named CrossrankError (issue 19) ----------------------

def test_an_index_manifest_without_its_hnsw_settings_is_refused(tmp_path):
    path = tmp_path / "index"
    small_index().save(path)
    manifest_path = next(path.glob("gen-*/index.json"))
    manifest = json.loads(manifest_path.read_text())
    del manifest["connectivity"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"index.json'?: lacks the key 'connectivity'"):
        Index.load(path)


def test_a_current_file_that_is_not_text_is_refused_naming_it(tmp_path):
    path = tmp_path / "index"
    small_index().save(path)
    (path / "CURRENT").write_bytes(b"gen-\xff\xfe\x00")
    with pytest.raises(IndexFormatError, match="CURRENT") as info:
        Index.load(path)
    assert str(path / "CURRENT") in str(info.value)


def test_ids_with_a_lone_surrogate_and_bad_queries_are_refused():
    index = small_index()
    with pytest.raises(InvalidArgumentError, match=r"ids\[1\] is not valid Unicode: a lone surrogate"):
        index.add(["one", "two"], ["fine", "bad \ud800"], vectors=np.eye(8, dtype=np.float32)[:2])
    assert len(index) == 40  # nothing added
    with pytest.raises(ArgumentTypeError, match="query must be a str, got NoneType None"):
        index.search(None)
    with pytest.raises(ArgumentTypeError, match="query must be a str, got int 5"):
        index.search(5)


def test_hnsw_settings_usearch_refuses_are_refused_first():
    with pytest.raises(InvalidArgumentError, match=r"connectivity must be an integer >= 2 or None, got 1"):
        small_index().build(small_index().embedder, ["a"], vectors=np.eye(8, dtype=np.float32)[:1], connectivity=1)


def test_a_tokenizer_file_that_is_not_one_is_refused_naming_it(tiny_cross, tmp_path):
    from crossrank.artifact import sha256_file

    copy = tmp_path / "artifact"
    shutil.copytree(tiny_cross, copy)
    (copy / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = sha256_file(copy / "tokenizer.json")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="is not a tokenizers file") as info:
        crossrank.Reranker(copy)
    assert str(copy / "tokenizer.json") in str(info.value)


def test_export_and_kernel_refusals_are_crossrank_errors(tmp_path):
    from crossrank.errors import CrossrankError, UnsupportedModelError
    from crossrank.export.fidelity import jsonl_sample
    from crossrank.export.ladder import parse_keep
    from crossrank.kernels.fusion import fuse_transformer
    from crossrank.kernels.heads import add_score_head

    bad = tmp_path / "fidelity.jsonl"
    bad.write_text('{"query": "q", "documents": "not a list"}\n')
    with pytest.raises(InvalidArgumentError, match='"documents" must be a list of strings'):
        jsonl_sample(bad)
    with pytest.raises(InvalidArgumentError, match="names 3 layers"):
        parse_keep("0,2,5", 2, 6)
    with pytest.raises(UnsupportedModelError, match="needs 1 or 2 labels"):
        add_score_head(None, num_labels=3)
    with pytest.raises(UnsupportedModelError, match="no fusion rules for model type 'no-such-type'"):
        fuse_transformer(tmp_path / "model.onnx", "no-such-type", 12, 768)
    assert issubclass(UnsupportedModelError, CrossrankError) and issubclass(UnsupportedModelError, ValueError)
