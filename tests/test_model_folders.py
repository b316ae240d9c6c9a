"""A Hugging Face model folder as a reranker of ``crossrank search/eval --reranker`` and ``select
--rerankers``: exported once into the artifact cache, then reused (shape tests on a tiny generated
cross-encoder; the docs examples run the real ladder, tests/test_docs.py)."""

from __future__ import annotations

import json
import sys

import pytest

from crossrank.errors import MissingFileError, UsageError
from crossrank.front.cli import main
from crossrank.front.model_folders import default_precision, reranker_artifact

DOCUMENTS = ["TransE embeds knowledge graphs.", "Sourdough bread: a recipe.", "RDF and OWL ontologies.",
             "Graph neural networks for link prediction.", "A history of the bicycle."]


@pytest.fixture(scope="module")
def small_index(bi_int8, tmp_path_factory):
    from crossrank.embedder import Embedder
    from crossrank.index import Index

    out = tmp_path_factory.mktemp("index") / "docs"
    Index.build(Embedder(bi_int8), DOCUMENTS, ids=[f"d{i}" for i in range(len(DOCUMENTS))], progress=False).save(out)
    return out


def test_search_exports_a_model_folder_once_then_reuses_it(tiny_cross_src, small_index, tmp_path, capsys):
    cache = tmp_path / "artifacts"
    argv = ["search", "--index", str(small_index), "--reranker", str(tiny_cross_src), "--export-precision", "fp32",
            "--artifacts", str(cache), "--k", "5", "--top-n", "2", "--json", "knowledge graphs"]
    assert main(argv) == 0
    first = capsys.readouterr()
    artifact = cache / f"{tiny_cross_src.name}-fp32"
    assert (artifact / "manifest.json").is_file()
    assert f"[new]    {tiny_cross_src} -> {artifact} (fp32)" in first.err
    assert len(json.loads(first.out)["hits"]) == 2
    assert main(argv) == 0
    second = capsys.readouterr()
    assert f"[cached] {tiny_cross_src} -> {artifact} (fp32)" in second.err and "exporting" not in second.err
    assert json.loads(second.out)["hits"] == json.loads(first.out)["hits"]  # the same artifact scores the same


def test_select_takes_model_folders_and_names_them_as_given(tiny_cross_src, small_index, tmp_path, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query": "knowledge graphs", "relevant": ["d0", "d3"]}) + "\n")
    cache = tmp_path / "artifacts"
    assert main(["select", "--index", str(small_index), "--rerankers", str(tiny_cross_src), "--queries", str(queries),
                 "--k", "5", "--depths", "5", "--latency-queries", "1", "--export-precision", "fp32",
                 "--artifacts", str(cache), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rerankers"] == {tiny_cross_src.name: str(cache / f"{tiny_cross_src.name}-fp32")}
    assert [row["config"] for row in report["rows"]] == ["first stage only", f"{tiny_cross_src.name}@5"]


def test_an_artifact_passes_through_without_the_export_package(tiny_cross, monkeypatch):
    monkeypatch.setitem(sys.modules, "crossrank.export", None)  # importing it would fail
    assert reranker_artifact(tiny_cross, "int8") == tiny_cross


def test_without_the_export_extra_the_error_names_the_command(tiny_cross_src, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "crossrank.export", None)
    out = tmp_path / f"{tiny_cross_src.name}-int8"
    with pytest.raises(UsageError, match="'export' extra") as caught:
        reranker_artifact(tiny_cross_src, "int8", tmp_path)
    assert f"crossrank export {tiny_cross_src} {out} --kind cross --precision int8" in str(caught.value)
    assert not out.exists()


def test_a_missing_folder_is_named(small_index, tmp_path, capsys):
    with pytest.raises(MissingFileError, match="not a folder"):
        reranker_artifact(tmp_path / "nowhere", "int8")
    assert main(["search", "--index", str(small_index), "--reranker", str(tmp_path / "nowhere"), "q"]) == 2
    assert f"crossrank search: error: reranker {str(tmp_path / 'nowhere')!r} is not a folder" in capsys.readouterr().err


def test_default_precision_per_device():
    assert default_precision("cpu") == "int8" and default_precision("cuda") == "fp16"
