"""The starter reranker's quality on the Semanlink test tags -> benchmarks/results/starter.md/json.

For every test query: the first stage (int8 MiniLM bi-encoder + usearch, top 100) gives the
candidate list; the starter reranker (exported fp32 and int8) reorders the same list. Reports
nDCG@10, MRR@10 and recall@10 for the bi-encoder order and for each reranker order, and how the
gain depends on how many first-stage candidates are reranked. The k=100 rows are what
``crossrank eval --index artifacts/semanlink-index --reranker ART --split test`` prints.

With ``--card`` the figures also replace the block between the markers in the model card.

    python benchmarks/starter_report.py [--model models/starter-reranker] [--card]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from crossrank.evaluation.datasets import semanlink_queries
from crossrank.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k, spearman
from crossrank.progress import progress_bar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEPTHS = (10, 20, 50, 100)
CARD_START, CARD_END = "<!-- figures:start -->", "<!-- figures:end -->"


def figures(ranked: list[list], queries) -> dict:
    n = len(queries)
    return {"ndcg@10": sum(ndcg_at_k(r, q.relevant, 10) for r, q in zip(ranked, queries)) / n,
            "mrr@10": sum(mrr_at_k(r, q.relevant, 10) for r, q in zip(ranked, queries)) / n,
            "recall@10": sum(recall_at_k(r, q.relevant, 10) for r, q in zip(ranked, queries)) / n,
            "recall@100": sum(recall_at_k(r, q.relevant, 100) for r, q in zip(ranked, queries)) / n}


def rerank_all(pipeline, queries, k: int, batch: int = 8):
    """Per query: candidate ids in first-stage order and their reranker scores; plus seconds."""
    lists, scores = [], []
    start = time.perf_counter()
    for begin in progress_bar(range(0, len(queries), batch), desc="reranking", unit="batch"):
        part = queries[begin: begin + batch]
        for result in pipeline.search_many([q.text for q in part], k=k, top_n=None):
            hits = sorted(result.hits, key=lambda h: h.first_stage_rank)
            lists.append([h.id for h in hits])
            scores.append(np.array([h.score for h in hits], dtype=np.float64))
    return lists, scores, time.perf_counter() - start


def reorder(ids: list, scores: np.ndarray, depth: int) -> list:
    """Rerank the first ``depth`` candidates by score; the rest keep first-stage order below."""
    head = sorted(range(min(depth, len(ids))), key=lambda i: -scores[i])
    return [ids[i] for i in head] + ids[depth:]


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [f"Semanlink **{report['split']}** split: {report['queries']} tag queries, first stage = "
             f"{report['embedder']} + usearch index (top {report['k']}), same candidate lists for every row.",
             "", "| ranking of the top-100 candidates | nDCG@10 | MRR@10 | recall@10 | recall@100 |",
             "|---|---|---|---|---|"]
    for name, values in rows.items():
        lines.append(f"| {name} | {values['ndcg@10']:.4f} | {values['mrr@10']:.4f} | "
                     f"{values['recall@10']:.4f} | {values['recall@100']:.4f} |")
    lines += ["", "nDCG@10 when only the first-stage top *d* are reranked (the rest keep their order):", "",
              "| d | " + " | ".join(str(d) for d in DEPTHS) + " |", "|---" * (len(DEPTHS) + 1) + "|"]
    for precision, by_depth in report["depth_ndcg@10"].items():
        lines.append(f"| {precision} | " + " | ".join(f"{by_depth[str(d)]:.4f}" for d in DEPTHS) + " |")
    fp32, int8 = rows["reranker fp32"], rows["reranker int8"]
    first = rows["bi-encoder (first stage)"]
    lines += ["", f"- reranking gain (fp32): nDCG@10 {fp32['ndcg@10'] - first['ndcg@10']:+.4f}, "
              f"MRR@10 {fp32['mrr@10'] - first['mrr@10']:+.4f}, recall@10 {fp32['recall@10'] - first['recall@10']:+.4f}",
              f"- int8 vs fp32: nDCG@10 {int8['ndcg@10'] - fp32['ndcg@10']:+.4f}; Spearman of the "
              f"{report['pairs']} pair scores {report['int8_vs_fp32_spearman']:.4f}",
              f"- rerank time for all {report['pairs']} pairs (2-core CPU, incl. first stage): "
              + ", ".join(f"{p} {s:.0f} s" for p, s in report["seconds"].items()),
              "", "Reproduce: `make starter-report` (or `python benchmarks/starter_report.py`); the k=100 rows: "
              "`crossrank eval --index artifacts/semanlink-index --reranker artifacts/starter-reranker-int8 "
              "--split test`."]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, name: str, title: str, report: dict, text: str) -> None:
    """``folder/name.json`` (the figures) and ``folder/name.md`` (``text`` under ``title``), and
    the text printed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{name}.md").write_text(f"# {title}\n\n" + text)
    print(text)


def write_card(model: Path, text: str) -> None:
    """Replace the figures block between the markers in ``model``'s card."""
    card = model / "README.md"
    old = card.read_text()
    if CARD_START not in old or CARD_END not in old:
        sys.exit(f"{card} has no {CARD_START} ... {CARD_END} block to fill")
    head, rest = old.split(CARD_START, 1)
    card.write_text(head + CARD_START + "\n" + text + rest[rest.index(CARD_END):])
    print(f"updated {card}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "starter-reranker"), help="reranker source folder")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="export and index cache")
    parser.add_argument("--split", default="test", choices=["test", "dev"], help="query split (default test)")
    parser.add_argument("--k", type=int, default=100, help="first-stage candidates (default 100)")
    parser.add_argument("--card", action="store_true", help="also write the figures into the model card")
    args = parser.parse_args(argv)

    from crossrank.export import ensure_artifact
    from crossrank.embedder import Embedder
    from crossrank.export.starter import first_stage
    from crossrank.pipeline import Pipeline
    from crossrank.reranker import Reranker

    artifacts, model = Path(args.artifacts), Path(args.model)
    index = first_stage(artifacts)
    embedder = Embedder(artifacts / "embedder-int8")
    queries = semanlink_queries(args.split)
    rows, depth, seconds, all_scores = {}, {}, {}, {}
    for precision in ("fp32", "int8"):
        artifact, _ = ensure_artifact(model, artifacts / f"{model.name}-{precision}", "cross", precision)
        pipeline = Pipeline(embedder, index, Reranker(artifact.path))
        lists, scores, seconds[precision] = rerank_all(pipeline, queries, args.k)
        if not rows:
            rows["bi-encoder (first stage)"] = figures(lists, queries)
        rows[f"reranker {precision}"] = figures([reorder(i, s, args.k) for i, s in zip(lists, scores)], queries)
        depth[precision] = {str(d): figures([reorder(i, s, d) for i, s in zip(lists, scores)], queries)["ndcg@10"]
                            for d in DEPTHS}
        all_scores[precision] = np.concatenate(scores)
    report = {"split": args.split, "queries": len(queries), "k": args.k, "model": str(model),
              "embedder": "MiniLM int8", "pairs": int(len(all_scores["fp32"])), "rows": rows,
              "depth_ndcg@10": depth, "seconds": {p: round(s, 1) for p, s in seconds.items()},
              "int8_vs_fp32_spearman": spearman(all_scores["fp32"], all_scores["int8"])}
    text = markdown(report)
    write_report(RESULTS, "starter", "Starter reranker quality", report, text)
    if args.card:
        write_card(model, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
