"""crossrank.Pipeline and the index/search/eval commands on real Semanlink data.

The corpus: every document relevant to 12 test-split tag queries, plus other documents up to 300.
Stage results are checked against references computed independently (index search, the
reranker's own scores, the metrics over numpy brute force).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossrank.evaluation.datasets import load_semanlink, semanlink_queries
from crossrank.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from crossrank.evaluation.retrieval import evaluate
from crossrank.front.cli import main
from crossrank.front.search import read_corpus
from crossrank.index import EmbedderMismatchError, Index
from crossrank.pipeline import STAGES, Pipeline

N_DOCS = 300
K = 20  # candidates reranked per query: keeps the seeded cross-encoder's work small on 2 cores


@pytest.fixture(scope="module")
def queries():
    chosen = [q for q in semanlink_queries("test") if 2 <= len(q.relevant) <= 8][:12]
    assert len(chosen) == 12
    return chosen


@pytest.fixture(scope="module")
def corpus(queries):
    documents, _ = load_semanlink()
    wanted = set().union(*(q.relevant for q in queries))
    picked = [d for d in documents if d.id in wanted]
    picked += [d for d in documents if d.id not in wanted][: N_DOCS - len(picked)]
    return [d.id for d in picked], [d.text for d in picked]


@pytest.fixture(scope="module")
def embedder(bi_fp32):
    from crossrank.embedder import Embedder

    return Embedder(bi_fp32)


@pytest.fixture(scope="module")
def reranker(cross_fp32):
    from crossrank.reranker import Reranker

    return Reranker(cross_fp32)


@pytest.fixture(scope="module")
def index(embedder, corpus):
    ids, texts = corpus
    return Index.build(embedder, texts, ids, dtype="f32", progress=False)


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "index"
    index.save(path)
    return path


# -- Pipeline -------------------------------------------------------------------------------------

def test_first_stage_only_equals_the_index(embedder, index, queries):
    pipeline = Pipeline(embedder, index)
    for query in queries[:6]:
        result = pipeline.search(query.text, k=K, top_n=5)
        ids, similarities = index.search(query.text, k=K)
        assert result.ids == ids[:5] and result.candidates == K and not result.reranked
        assert np.allclose([h.similarity for h in result.hits], similarities[:5], atol=1e-6)
        assert [h.rank for h in result.hits] == [h.first_stage_rank for h in result.hits] == [1, 2, 3, 4, 5]
        assert all(h.score is None for h in result.hits)
        assert [h.document for h in result.hits] == index.get_documents(ids[:5])
        assert set(result.timings_ms) == set(STAGES)
        t = result.timings_ms
        assert t["embed"] > 0 and t["search"] > 0 and t["fetch"] > 0
        assert t["total"] >= t["embed"] + t["search"] + t["fetch"] + t["rerank"] - 1e-6
    everything = pipeline.search(queries[0].text, k=K, top_n=None)
    assert everything.ids == index.search(queries[0].text, k=K).ids


def test_reranked_results_follow_the_cross_encoder(embedder, index, reranker, queries):
    pipeline = Pipeline(embedder, index, reranker)
    for query in queries[:3]:
        result = pipeline.search(query.text, k=K, top_n=5)
        candidates, similarities = index.search(query.text, k=K)
        documents = index.get_documents(candidates)
        scores = reranker.score([(query.text, d) for d in documents])  # reference, input order
        order = np.argsort(-scores, kind="stable")[:5]
        assert result.reranked and result.candidates == K and len(result.hits) == 5
        assert result.ids == [candidates[i] for i in order]
        assert np.allclose([h.score for h in result.hits], scores[order], atol=1e-5)
        assert [h.first_stage_rank for h in result.hits] == [int(i) + 1 for i in order]
        assert np.allclose([h.similarity for h in result.hits], similarities[order], atol=1e-6)
        assert result.timings_ms["rerank"] > 0


def test_search_many_shares_batches_and_matches_search(embedder, index, reranker, queries):
    pipeline = Pipeline(embedder, index, reranker)
    texts = [q.text for q in queries[:3]]
    many = pipeline.search_many(texts, k=K, top_n=4)
    assert [r.batch_size for r in many] == [3, 3, 3]
    for text, result in zip(texts, many):
        single = pipeline.search(text, k=K, top_n=4)
        assert result.ids == single.ids
        assert np.allclose([h.score for h in result.hits], [h.score for h in single.hits], atol=1e-5)


def test_search_with_a_deadline(embedder, index, reranker, queries):
    pipeline = Pipeline(embedder, index, reranker)
    query = queries[0].text
    plain = pipeline.search(query, k=K, top_n=None)
    assert plain.scored == K
    relaxed = pipeline.search(query, k=K, top_n=None, deadline_ms=float("inf"))
    assert relaxed.ids == plain.ids and relaxed.scored == K
    assert np.allclose([h.score for h in relaxed.hits], [h.score for h in plain.hits], atol=1e-6)
    # no time left after the first stage: nothing is scored, the first-stage order stands
    rushed = pipeline.search(query, k=K, top_n=5, deadline_ms=0)
    assert rushed.scored == 0 and rushed.reranked
    assert [h.first_stage_rank for h in rushed.hits] == [1, 2, 3, 4, 5]
    assert all(np.isnan(h.score) for h in rushed.hits)
    assert Pipeline(embedder, index).search(query, k=K, deadline_ms=0).scored is None
    with pytest.raises(ValueError, match="deadline_ms must be a number >= 0"):
        pipeline.search(query, deadline_ms=-1)


def test_pipeline_refuses_another_embedder(index, bi_int8):
    from crossrank.embedder import Embedder

    with pytest.raises(EmbedderMismatchError, match=str(bi_int8)):
        Pipeline(Embedder(bi_int8), index)


def test_pipeline_argument_errors(embedder, index):
    pipeline = Pipeline(embedder, index)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        pipeline.search("ontologies", k=0)
    with pytest.raises(ValueError, match="top_n must be a positive integer or None, got -1"):
        pipeline.search("ontologies", top_n=-1)
    with pytest.raises(ValueError, match="query is empty"):
        pipeline.search("   ")
    with pytest.raises(TypeError, match="queries must be a list of str"):
        pipeline.search_many("ontologies")


def test_evaluate_matches_metrics_over_brute_force(embedder, index, corpus, queries):
    ids, _ = corpus
    figures = evaluate(Pipeline(embedder, index), queries, k=K)
    assert set(figures) == {"first_stage"}
    vectors = index.get_vectors(ids)
    query_vectors = embedder.embed([q.text for q in queries])
    expected = {"ndcg@10": [], "mrr@10": [], "recall@10": [], f"recall@{K}": []}
    for query, vector in zip(queries, query_vectors):
        ranked = [ids[i] for i in np.argsort(-(vectors @ vector), kind="stable")[:K]]
        expected["ndcg@10"].append(ndcg_at_k(ranked, set(query.relevant), 10))
        expected["mrr@10"].append(mrr_at_k(ranked, set(query.relevant), 10))
        expected["recall@10"].append(recall_at_k(ranked, set(query.relevant), 10))
        expected[f"recall@{K}"].append(recall_at_k(ranked, set(query.relevant), K))
    for name, values in expected.items():
        assert figures["first_stage"][name] == pytest.approx(np.mean(values), abs=1e-9), name
    # MiniLM finds tagged documents by the tag's label far above chance (300 docs, <= 8 relevant)
    assert figures["first_stage"]["ndcg@10"] > 0.3


def test_evaluate_with_reranker_reports_both_stages(embedder, index, reranker, queries):
    first = evaluate(Pipeline(embedder, index), queries[:3], k=K)["first_stage"]
    both = evaluate(Pipeline(embedder, index, reranker), queries[:3], k=K, batch=2)
    assert both["first_stage"] == pytest.approx(first)
    # reranking reorders the same K candidates: recall@K cannot change
    assert both["reranked"][f"recall@{K}"] == pytest.approx(first[f"recall@{K}"])
    assert set(both["reranked"]) == set(first)


def test_semanlink_index_is_reused_only_when_it_matches(monkeypatch, tmp_path, embedder, bi_int8):
    import crossrank.evaluation.retrieval
    from crossrank.embedder import Embedder
    from crossrank.evaluation.retrieval import SEMANLINK_CORPUS, ensure_semanlink_index

    documents, queries = load_semanlink()
    monkeypatch.setattr(crossrank.evaluation.retrieval, "load_semanlink", lambda: (documents[:30], queries))
    out = tmp_path / "semanlink"
    built, reused = ensure_semanlink_index(embedder, out, progress=False)
    assert not reused and built.ids() == [d.id for d in documents[:30]]
    assert built.metadata["corpus"] == SEMANLINK_CORPUS
    again, reused = ensure_semanlink_index(embedder, out, progress=False)
    assert reused and again.view and again.ids() == built.ids()
    _, reused = ensure_semanlink_index(embedder, out, dtype="f32", progress=False)
    assert not reused  # another dtype asked for: rebuilt
    other = Embedder(bi_int8)
    rebuilt, reused = ensure_semanlink_index(other, out, dtype="f32", progress=False)
    assert not reused and rebuilt.embedder_info["sha256"] == other.artifact.sha256  # never trusts a mismatch
    assert Index.load(out, embedder=other).ids() == built.ids()


# -- CLI ------------------------------------------------------------------------------------------

def _write_corpus(path, ids, texts):
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
    return path


def test_read_corpus_reports_bad_lines(tmp_path):
    (tmp_path / "ok.jsonl").write_text('{"id": "a", "text": "first"}\n\n{"id": 7, "text": "second"}\n')
    assert read_corpus(tmp_path / "ok.jsonl") == (["a", 7], ["first", "second"])
    cases = {
        '{"id": "a", "text": "x"}\n{"id": "b", "text": \n': r"bad\.jsonl:2: not valid JSON",
        '{"id": "a", "text": "x"}\n{"id": "b"}\n': r'bad\.jsonl:2: expected an object with "id" and "text"',
        '{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n': r"bad\.jsonl:3: id 'a' already appeared on line 1",
        '{"id": 1.5, "text": "x"}\n': r'bad\.jsonl:1: "id" must be a string or an integer',
        '{"id": "a", "text": ""}\n': r'bad\.jsonl:1: "text" must be a non-empty string',
        '\n\n': "holds no documents",
    }
    for content, message in cases.items():
        (tmp_path / "bad.jsonl").write_text(content)
        with pytest.raises(ValueError, match=message):
            read_corpus(tmp_path / "bad.jsonl")


def test_cli_argument_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("CROSSRANK_STORE", raising=False)
    assert main(["search", "q"]) == 2  # the first stage: --index, --store or $CROSSRANK_STORE
    assert "name the first stage: --index DIR or --store URL|DIR" in capsys.readouterr().err
    for argv, message in [
        (["search", "--index", "x", "--k", "0", "q"], "argument --k: expected a positive integer, got 0"),
        (["search", "--index", "x", "--top-n", "ten", "q"], "argument --top-n: expected a positive integer, got 'ten'"),
        (["index", "build", "--embedder", "e", "--out", "o"], "one of the arguments --corpus --semanlink is required"),
        (["index", "build", "--embedder", "e", "--out", "o", "--corpus", "c", "--semanlink"], "not allowed with"),
        (["index", "build", "--embedder", "e", "--out", "o", "--corpus", "c", "--dtype", "f64"], "invalid choice: 'f64'"),
        (["eval", "--index", "x", "--split", "validation"], "invalid choice: 'validation'"),
        (["search", "--index", "x", "--deadline-ms", "-5", "q"], "expected milliseconds (a number >= 0), got '-5'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "x"}\nnot json\n')
    assert main(["index", "build", "--embedder", "e", "--corpus", str(tmp_path / "bad.jsonl"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "missing"), "--embedder", "e", "q"]) == 2
    assert f"index folder '{tmp_path / 'missing'}' does not exist" in capsys.readouterr().err
    for help_argv in (["index", "build", "--help"], ["search", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(help_argv)
        assert exit_info.value.code == 0 and "example:" in capsys.readouterr().out


def test_cli_build_search_eval_end_to_end(capsys, tmp_path, bi_fp32, cross_fp32, corpus, embedder,
                                          reranker, queries, index):
    ids, texts = corpus
    corpus_file = _write_corpus(tmp_path / "docs.jsonl", ids, texts)
    out = tmp_path / "index"
    assert main(["index", "build", "--embedder", str(bi_fp32), "--corpus", str(corpus_file),
                 "--out", str(out), "--dtype", "f32", "--no-progress"]) == 0
    assert f"indexed {N_DOCS} documents" in capsys.readouterr().out
    built = Index.load(out, embedder=embedder)
    assert built.ids() == ids
    assert np.abs(built.get_vectors(ids) - index.get_vectors(ids)).max() < 1e-4
    assert main(["index", "build", "--embedder", str(bi_fp32), "--corpus", str(corpus_file),
                 "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err

    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == N_DOCS and info["embedder"]["sha256"] == embedder.artifact.sha256

    query = queries[0].text
    # --embedder defaults to the artifact recorded in the index
    assert main(["search", "--index", str(out), "--reranker", str(cross_fp32), "--k", str(K),
                 "--top-n", "3", "--json", query]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = Pipeline(embedder, built, reranker).search(query, k=K, top_n=3)
    assert [h["id"] for h in printed["hits"]] == expected.ids
    assert np.allclose([h["score"] for h in printed["hits"]], [h.score for h in expected.hits], atol=1e-5)
    assert set(printed["timings_ms"]) == set(STAGES)
    assert main(["search", "--index", str(out), "--top-n", "2", query]) == 0
    text = capsys.readouterr().out
    first_id, first_similarity = (x[0] for x in built.search(query, k=2))
    assert f"  1. sim {first_similarity:.4f}  (stage-1 #1)  {first_id}" in text
    assert "2 of 100 candidates, first stage only" in text

    assert main(["eval", "--index", str(out), "--split", "test", "--limit", "5", "--k", str(K), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    reference = evaluate(Pipeline(embedder, built), semanlink_queries("test")[:5], k=K)
    assert report["queries"] == 5 and "reranked" not in report
    assert report["first_stage"] == pytest.approx(reference["first_stage"])
