"""Multi-stage cascades (Pipeline(rerankers=..., depths=...)) and `crossrank select`.

Two different real-weight fp32 cross-encoders (the seeded MiniLM head and the tiny generated model:
order and plumbing tests only, no quality claim) over real Semanlink documents and the real MiniLM
bi-encoder; fp32 scores do not depend on batch mates, so every expectation is exact.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossrank.errors import InvalidArgumentError
from crossrank.evaluation.datasets import load_semanlink, semanlink_queries
from crossrank.evaluation.selection import Config, Point, best_within, config_metrics, mark_pareto, ranked_ids
from crossrank.front.cli import main
from crossrank.index import Index
from crossrank.pipeline import Pipeline

K = 20


@pytest.fixture(scope="module")
def queries():
    return [q for q in semanlink_queries("dev") if 2 <= len(q.relevant) <= 8][:6]


@pytest.fixture(scope="module")
def embedder(bi_fp32):
    from crossrank.embedder import Embedder

    return Embedder(bi_fp32)


@pytest.fixture(scope="module")
def index(embedder, queries):
    documents, _ = load_semanlink()
    wanted = set().union(*(q.relevant for q in queries))
    picked = [d for d in documents if d.id in wanted] + [d for d in documents if d.id not in wanted][:150]
    return Index.build(embedder, [d.text for d in picked], [d.id for d in picked], dtype="f32", progress=False)


@pytest.fixture(scope="module")
def small(tiny_cross):
    from crossrank.reranker import Reranker

    return Reranker(tiny_cross)


@pytest.fixture(scope="module")
def large(cross_fp32):
    from crossrank.reranker import Reranker

    return Reranker(cross_fp32)


def test_cascade_reranks_each_stage_on_the_previous_stage_top(embedder, index, small, large, queries):
    cascade = Pipeline(embedder, index, rerankers=[small, large], depths=[15, 5])
    first = Pipeline(embedder, index)
    for query in queries:
        result = cascade.search(query.text, k=K, top_n=None)
        candidates = first.search(query.text, k=K, top_n=None).hits
        texts = [h.document for h in candidates]
        small_pairs = [(query.text, t) for t in texts[:15]]
        small_scores, small_raw = small.score(small_pairs), small.score(small_pairs, raw_scores=True)
        after_small = sorted(range(15), key=lambda i: -small_raw[i])  # rankings are made on the raw scores
        large_pairs = [(query.text, texts[i]) for i in after_small[:5]]
        large_scores = dict(zip(after_small[:5], large.score(large_pairs)))
        large_raw = dict(zip(after_small[:5], large.score(large_pairs, raw_scores=True)))
        expected = sorted(after_small[:5], key=lambda i: -large_raw[i]) + after_small[5:] + list(range(15, K))
        assert [h.first_stage_rank - 1 for h in result.hits] == expected
        for hit in result.hits:
            i = hit.first_stage_rank - 1
            want_small = float(small_scores[i]) if i < 15 else None
            want_large = float(large_scores[i]) if i in large_scores else None
            assert hit.stage_scores == (want_small, want_large)
            assert hit.score == (want_large if want_large is not None else want_small)
        assert [s["depth"] for s in result.stages] == [15, 5] and [s["scored"] for s in result.stages] == [15, 5]
        assert result.timings_ms["rerank"] >= sum(s["ms"] for s in result.stages) * 0.99
        assert result.scored == 5 and result.reranked


def test_one_reranker_at_a_depth_and_search_many(embedder, index, large, queries):
    shallow = Pipeline(embedder, index, rerankers=[large], depths=[5])
    full = Pipeline(embedder, index, large)
    texts = [q.text for q in queries]
    for one, many, everything in zip([shallow.search(t, k=K, top_n=None) for t in texts],
                                     shallow.search_many(texts, k=K, top_n=None),
                                     full.search_many(texts, k=K, top_n=None)):
        assert one.ids == many.ids and [h.stage_scores for h in one.hits] == [h.stage_scores for h in many.hits]
        assert sorted(h.first_stage_rank for h in one.hits[:5]) == [1, 2, 3, 4, 5]
        assert [h.first_stage_rank for h in one.hits[5:]] == list(range(6, K + 1))
        top5 = {h.id: h.score for h in one.hits[:5]}
        assert all(top5[h.id] == h.score for h in everything.hits if h.id in top5)  # same pair, same score


def test_cascade_deadline(embedder, index, small, large, queries):
    cascade = Pipeline(embedder, index, rerankers=[small, large], depths=[15, 5])
    nothing = cascade.search(queries[0].text, k=K, top_n=None, deadline_ms=0)
    assert [h.first_stage_rank for h in nothing.hits] == list(range(1, K + 1))
    assert [s["scored"] for s in nothing.stages] == [0, 0] and nothing.scored == 0
    assert all(h.score is None or math.isnan(h.score) for h in nothing.hits)
    unlimited = cascade.search(queries[0].text, k=K, top_n=None, deadline_ms=float("inf"))
    assert unlimited.ids == cascade.search(queries[0].text, k=K, top_n=None).ids


@pytest.mark.parametrize("kwargs, message", [
    ({"rerankers": ["a", "b"]}, "needs depths"),
    ({"rerankers": ["a", "b"], "depths": [20]}, "one depth per reranker"),
    ({"rerankers": ["a", "b"], "depths": [10, 20]}, "depths must not grow"),
    ({"rerankers": ["a"], "depths": [0]}, r"depths\[0\] must be a positive integer"),
    ({"depths": [10]}, "depths without rerankers"),
    ({"reranker": "a", "rerankers": ["b"]}, "not both"),
])
def test_cascade_arguments(embedder, index, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Pipeline(embedder, index, **kwargs)


def test_selection_rankings_equal_the_pipelines(embedder, index, small, large, queries):
    """select computes every configuration from one pass of each model: it must be what the
    Pipeline of that configuration returns."""
    first = Pipeline(embedder, index)
    for query in queries:
        ids = first.search(query.text, k=K, top_n=None).ids
        texts = [h.document for h in first.search(query.text, k=K, top_n=None).hits]
        scores = {"small": small.score([(query.text, t) for t in texts], raw_scores=True),  # as select scores
                  "large": large.score([(query.text, t) for t in texts], raw_scores=True)}
        for config in (Config(), Config(("large",), (10,)), Config(("small", "large"), (20, 5))):
            models = {"small": small, "large": large}
            pipeline = Pipeline(embedder, index, rerankers=[models[n] for n in config.rerankers],
                                depths=list(config.depths)) if config.rerankers else first
            assert pipeline.search(query.text, k=K, top_n=None).ids == ranked_ids(config, ids, scores)
    figures = config_metrics(Config(), [ids], [scores], [{ids[0]}])
    assert figures["mrr@10"] == 1.0 and figures["ndcg@10"] == 1.0


def test_pareto_front_and_best_within_budget():
    def point(name, quality, latency, p95):
        return Point(Config((name,), (10,)), quality, latency, {"p95_ms": p95})

    points = [point("fast", 0.40, 10, 12), point("slow-better", 0.50, 100, 120),
              point("dominated", 0.39, 50, 60), point("tie-slower", 0.50, 150, 160), point("best", 0.55, 400, 500)]
    front = mark_pareto(points)
    assert [p.config.rerankers[0] for p in front] == ["fast", "slow-better", "best"]
    assert [p.pareto for p in points] == [True, True, False, False, True]
    assert best_within(points, 200).config.rerankers == ("slow-better",)
    assert best_within(points, None).config.rerankers == ("best",)
    assert best_within(points, 5) is None


def test_select_command(embedder, index, tiny_cross, cross_fp32, queries, tmp_path, capsys):
    path = tmp_path / "index"
    index.save(path)
    labelled = tmp_path / "queries.jsonl"
    labelled.write_text("".join(json.dumps({"query": q.text, "relevant": sorted(q.relevant)}) + "\n"
                                for q in queries[:4]))
    small_art, large_art = tmp_path / "small", tmp_path / "large"
    import shutil

    shutil.copytree(tiny_cross, small_art)
    shutil.copytree(cross_fp32, large_art)
    assert main(["select", "--index", str(path), "--rerankers", f"{small_art},{large_art}", "--queries", str(labelled),
                 "--depths", "5,10", "--k", str(K), "--latency-queries", "2", "--latency-budget-ms", "60000",
                 "--json", "--quiet", "--out", str(tmp_path / "report")]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [row["config"] for row in report["rows"]]
    assert names[0] == "first stage only" and "small@5" in names and "large@10" in names
    assert any(" > " in name for name in names)  # default cascades: the faster model into the slower
    assert all(row["ranking_mismatches"] == 0 for row in report["rows"])
    points = [Point(Config(tuple(r["rerankers"]), tuple(r["depths"])), r["ndcg@10"], r["p50_ms"]) for r in report["rows"]]
    mark_pareto(points)
    assert [p.pareto for p in points] == [r["pareto"] for r in report["rows"]]
    assert report["best_within_budget"] in names
    assert (tmp_path / "report" / "select.png").stat().st_size > 1000
    first = next(r for r in report["rows"] if r["config"] == "first stage only")
    assert first["pairs_per_s"] is None and np.isfinite(first["p50_ms"])


def test_search_and_eval_cli_take_a_cascade(index, tiny_cross, cross_fp32, tmp_path, capsys):
    path = tmp_path / "index"
    index.save(path)
    assert main(["search", "--index", str(path), "--reranker", str(tiny_cross), "--reranker", str(cross_fp32),
                 "--depths", "10,3", "--k", str(K), "--json", "ontology"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["depth"] for s in result["stages"]] == [10, 3]
    assert main(["search", "--index", str(path), "--reranker", str(tiny_cross), "--reranker", str(cross_fp32),
                 "ontology"]) == 2
    assert "needs depths" in capsys.readouterr().err
    assert main(["eval", "--index", str(path), "--reranker", str(tiny_cross), "--reranker", str(cross_fp32),
                 "--depths", "10,3", "--k", str(K), "--split", "dev", "--limit", "3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["depths"] == [10, 3] and len(figures["rerankers"]) == 2
    assert set(figures) >= {"first_stage", "reranked"}
