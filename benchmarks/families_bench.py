"""The export families beyond BERT at real sizes: crossrank against transformers / sentence-transformers
on the same (random) weights, in one run.

    python benchmarks/families_bench.py [--families modernbert deberta-v2 qwen3] [--queries 4] [--docs 20]
                                        [--rounds 3] [--latency-runs 5] [--threads N] [--out benchmarks/results]

No published weights of these families are available offline: each model is a seeded random
model at the configuration of a published reranker (crossrank.export.random_models, size "real"):
gte-reranker-modernbert-base (ModernBERT-base), mxbai-rerank-xsmall-v1 (DeBERTa-v3-xsmall) and
Qwen3-Reranker-0.6B. Random weights cost the same FLOPs as trained ones, so the speeds hold; the
quality of the published weights is NOT measured here. Encoders use the bundled MiniLM WordPiece
tokenizer, the decoder a BPE trained on Semanlink (token counts differ a little from the real
tokenizers'; every system here gets the same ids).

Per family:
- fidelity of crossrank's fp32 and int8 exports of the real-size model (figures from the export's
  own check, on 2 TREC RAG queries x 4 passages; an export below its bar, which ``crossrank
  export`` refuses, is kept here with --allow-low-fidelity to time it, and the report says so),
  and batch invariance at run time: target passages scored alone, among short mates and beside a
  mate that fills the window;
- the baseline on the same weights: sentence-transformers ``CrossEncoder`` (torch fp32, batch 16)
  for the encoders; for Qwen3 the model card's own code in transformers (fp32, batches of 8,
  left padding, logits at every position as the card computes them);
- throughput (all pairs, median of --rounds interleaved rounds), p50 of a 1 x 20 request
  (--latency-runs interleaved runs), Spearman of every system's scores against the baseline's.

Also the fidelity figures of the tiny test models (tests/test_families.py) on the default
240-pair Semanlink sample. Speeds are ratios inside this run. Writes families.md and
families.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import crossrank
from crossrank.evaluation.datasets import load_trec_rag
from crossrank.evaluation.metrics import spearman
from crossrank.front.args import positive_int_arg
from crossrank.front.measure import gemm_gflops, machine_name

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {"modernbert": "Alibaba-NLP/gte-reranker-modernbert-base",
             "deberta-v2": "mixedbread-ai/mxbai-rerank-xsmall-v1", "qwen3": "Qwen/Qwen3-Reranker-0.6B"}
ENCODER_WINDOW = 512  # every system of an encoder family reads pairs up to 512 tokens
DECODER_BATCH = 8
ST_BATCH = 16


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags)


def prepare(family: str, size: str, folder: Path, fidelity_data: Path | None) -> dict[str, Path]:
    """The random source checkpoint and its fp32 and int8 artifacts (built once, reused)."""
    from crossrank.export import ensure_artifact
    from crossrank.export.random_models import build_random_model

    src = folder / f"{family}-{size}-src"
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        print(f"building a random {family} model ({size}) ...", file=sys.stderr, flush=True)
        build_random_model(family, src, size=size)
    # Kept below the bar too (the report says so): random weights may score too flat for int8's rank bar.
    options = {"fidelity_data": fidelity_data, "allow_low_fidelity": True} if fidelity_data else {}
    paths = {"src": src}
    for precision in ("fp32", "int8"):
        paths[precision] = ensure_artifact(src, folder / f"{family}-{size}-{precision}", "cross", precision,
                                           **options)[0].path
    return paths


def export_figures(artifact: Path) -> dict:
    manifest = json.loads((artifact / "manifest.json").read_text())
    keys = ("pairs", "max_abs_diff", "spearman", "top10_agreement", "reference_score_std",
            "batch_invariance_max_abs_diff", "max_abs_diff_probability", "prompt_ids_agreement", "passed", "bar")
    size_mb = sum(f.stat().st_size for f in artifact.iterdir() if f.is_file()) / 1e6
    return {**{k: manifest["fidelity"][k] for k in keys if k in manifest["fidelity"]},
            "fusions": manifest["fusions"], "size_mb": round(size_mb, 1), "export_seconds": manifest["export_seconds"]}


def card_scorer(src: Path, threads: int):
    """The Qwen3-Reranker model card's scoring code (transformers, fp32) over pairs, in batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crossrank.export.prompts import load_template

    torch.set_num_threads(threads)
    template = load_template("qwen3-reranker")
    tokenizer = AutoTokenizer.from_pretrained(src, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    prefix = tokenizer.encode(template["prefix"][0], add_special_tokens=False)
    suffix = tokenizer.encode(template["suffix"][0], add_special_tokens=False)
    no_id, yes_id = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    max_length = template["max_length"]

    def score(pairs) -> np.ndarray:
        out = []
        for start in range(0, len(pairs), DECODER_BATCH):
            texts = [f"<Instruct>: {template['default_instruction']}\n<Query>: {q}\n<Document>: {d}"
                     for q, d in pairs[start: start + DECODER_BATCH]]
            inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                               max_length=max_length - len(prefix) - len(suffix))
            inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
            inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt")
            with torch.inference_mode():
                last = model(**inputs).logits[:, -1, :]
                pair = torch.nn.functional.log_softmax(torch.stack([last[:, no_id], last[:, yes_id]], dim=1), dim=1)
            out.append(pair[:, 1].exp().double().numpy())
        return np.concatenate(out)

    return score


def systems_for(family: str, paths: dict[str, Path], threads: int) -> dict[str, tuple]:
    """name -> (score(pairs) -> scores, crossrank.Reranker or None); the baseline first."""
    if family == "qwen3":
        systems = {f"transformers fp32, model card code (batch {DECODER_BATCH})": (card_scorer(paths["src"], threads),
                                                                                 None)}
        window = None
    else:
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(threads)
        model = CrossEncoder(str(paths["src"]), max_length=ENCODER_WINDOW, device="cpu")
        systems = {f"sentence-transformers torch fp32 (batch {ST_BATCH})": (
            lambda pairs: np.asarray(model.predict(pairs, batch_size=ST_BATCH, show_progress_bar=False)), None)}
        window = ENCODER_WINDOW
    for precision in ("fp32", "int8"):
        reranker = crossrank.Reranker(paths[precision], threads=threads, max_length=window)
        systems[f"crossrank {precision}"] = (lambda pairs, r=reranker: r.score(pairs), reranker)
    return systems


def runtime_invariance(reranker: crossrank.Reranker, query: str, targets: list[str], short: list[str],
                       long_mate: str) -> float:
    """Largest |logit alone - logit in a batch| over the targets (among short mates, beside a long one)."""
    worst = 0.0
    for target in targets:
        alone = reranker.score([(query, target)], raw_scores=True)[0]
        batches = [(short[:2] + [target] + short[2:], 2), ([long_mate, target], 1)]
        for docs, at in batches:
            together = reranker.score([(query, d) for d in docs], raw_scores=True)[at]
            worst = max(worst, abs(float(together) - float(alone)))
    return worst


def bench_family(family: str, paths: dict[str, Path], workload: list[dict], pool: list[str], threads: int,
                 rounds: int, latency_runs: int) -> dict:
    pairs = [(row["query"], doc) for row in workload for doc in row["documents"]]
    request = workload[0]
    systems = systems_for(family, paths, threads)
    for name, (score, _) in systems.items():
        score(pairs[:2])  # warm-up
    seconds = {name: [] for name in systems}
    scores = {}
    for round_ in range(rounds):
        for name, (score, _) in systems.items():
            print(f"  {family} round {round_ + 1}/{rounds}: {name} ({len(pairs)} pairs) ...", file=sys.stderr,
                  flush=True)
            start = time.perf_counter()
            scores[name] = score(pairs)
            seconds[name].append(time.perf_counter() - start)
    latency = {name: [] for name in systems}
    one_request = [(request["query"], doc) for doc in request["documents"]]
    for _ in range(latency_runs):
        for name, (score, _) in systems.items():
            start = time.perf_counter()
            score(one_request)
            latency[name].append((time.perf_counter() - start) * 1e3)
    baseline = next(iter(systems))
    rows = []
    for name, (_, reranker) in systems.items():
        median = statistics.median(seconds[name])
        rows.append({"system": name, "pairs": len(pairs), "pairs_per_s": len(pairs) / median,
                     "round_seconds": seconds[name], "p50_1x20_ms": float(np.percentile(latency[name], 50)),
                     "spearman_vs_baseline": spearman(scores[baseline], scores[name]),
                     "tokens_per_pair": None if reranker is None else float(np.mean(
                         reranker.token_lengths([(request["query"], d) for d in request["documents"]])))})
    long_mate = " ".join(pool[-4:])
    invariance = {}
    for name, (_, reranker) in systems.items():
        if reranker is not None:
            invariance[name] = runtime_invariance(reranker, request["query"], request["documents"][:2], pool[:4],
                                                  long_mate)
    return {"rows": rows, "runtime_batch_invariance_max_abs_diff": invariance}


def tiny_fidelity(folder: Path) -> dict:
    """The tiny test models' export figures on the default 240-pair Semanlink sample."""
    out = {}
    for family in ("modernbert", "deberta-v2", "qwen3"):
        paths = prepare(family, "tiny", folder, None)
        out[family] = {precision: export_figures(paths[precision]) for precision in ("fp32", "int8")}
    return out


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Export families at real sizes: speed and fidelity (random weights)", "",
        f"Machine: {report['machine']} ({report['cpu_flags']}); threads {report['threads']}; numpy fp32 GEMM "
        f"{report['gemm_gflops']:.0f} GFLOP/s; load average {report['load_start']} at the start, "
        f"{report['load_end']} at the end (the cores are shared with other work: compare only inside this run). "
        f"Command: `{report['command']}`.", "",
        f"**{report['run']}** Workload: {report['queries']} TREC RAG queries x {report['docs']} passages; "
        f"{report['rounds']} throughput round(s), {report['latency_runs']} 1 x 20 request(s) per system. "
        "Weights are seeded random at the published configurations: speeds hold, quality on the published "
        "weights is unmeasured here (no model hub).", "",
    ]
    for family, result in report["families"].items():
        lines += [f"## {family}: configuration of {PUBLISHED[family]}", "",
                  "| system | pairs/s | x baseline | p50 1x20 ms | x baseline | Spearman vs baseline | tokens/pair |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        base = result["rows"][0]
        for r in result["rows"]:
            tokens = "-" if r["tokens_per_pair"] is None else f"{r['tokens_per_pair']:.0f}"
            lines.append(f"| {r['system']} | {r['pairs_per_s']:.2f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
                         f"{r['p50_1x20_ms']:.0f} | {r['p50_1x20_ms'] / base['p50_1x20_ms']:.2f} | "
                         f"{r['spearman_vs_baseline']:.4f} | {tokens} |")
        lines += ["", "Export fidelity of the real-size model (the export's own check against PyTorch):", "",
                  "| precision | pairs | max abs logit diff | Spearman | bar | batch invariance (export) | "
                  "batch invariance (runtime) | size MB | fusions |", "|---|---:|---:|---:|---|---:|---:|---:|---|"]
        for precision, fig in result["export"].items():
            runtime = result["runtime_batch_invariance_max_abs_diff"].get(f"crossrank {precision}")
            fusions = ", ".join(f"{k} {v}" for k, v in fig["fusions"].items()) or "none"
            verdict = "pass" if fig["passed"] else f"**refused** ({fig['bar']}; kept here to time it)"
            lines.append(f"| {precision} | {fig['pairs']} | {fig['max_abs_diff']:.3g} | {fig['spearman']:.4f} | "
                         f"{verdict} | {fig['batch_invariance_max_abs_diff']:.3g} | {runtime:.3g} | "
                         f"{fig['size_mb']:.0f} | {fusions} |")
        lines.append("")
    if report.get("tiny"):
        lines += ["## Tiny test models (tests/test_families.py) on 240 Semanlink pairs", "",
                  "| family | fp32 max abs diff | fp32 batch invariance | int8 Spearman | int8 max abs diff | "
                  "int8 batch invariance | decoder: prompt ids = card's |", "|---|---:|---:|---:|---:|---:|---:|"]
        for family, fig in report["tiny"].items():
            agreement = fig["fp32"].get("prompt_ids_agreement")
            lines.append(f"| {family} | {fig['fp32']['max_abs_diff']:.3g} | "
                         f"{fig['fp32']['batch_invariance_max_abs_diff']:.3g} | {fig['int8']['spearman']:.4f} | "
                         f"{fig['int8']['max_abs_diff']:.3g} | {fig['int8']['batch_invariance_max_abs_diff']:.3g} | "
                         f"{'-' if agreement is None else f'{agreement:.0%}'} |")
        lines.append("")
    (out / "families.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["modernbert", "deberta-v2", "qwen3"],
                        choices=["modernbert", "deberta-v2", "qwen3"])
    parser.add_argument("--queries", type=positive_int_arg, default=4, help="TREC RAG queries (default 4)")
    parser.add_argument("--docs", type=positive_int_arg, default=20, help="passages per query (default 20)")
    parser.add_argument("--rounds", type=positive_int_arg, default=3, help="interleaved throughput rounds (default 3)")
    parser.add_argument("--latency-runs", type=positive_int_arg, default=5, help="interleaved 1 x 20 requests (default 5)")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny test models' fidelity section")
    parser.add_argument("--threads", type=int, default=None, help="threads for every system (default: physical cores)")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts" / "families"), help="model and artifact cache")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args(argv)
    from crossrank.settings import physical_cores

    threads = args.threads or physical_cores()
    folder = Path(args.artifacts)
    folder.mkdir(parents=True, exist_ok=True)
    trec = load_trec_rag()
    fidelity_data = folder / "fidelity-trec-2x4.jsonl"
    fidelity_data.write_text("".join(json.dumps({"query": r["query"], "documents": r["documents"][:4]}) + "\n"
                                     for r in trec[-2:]))
    workload = [{"query": r["query"], "documents": r["documents"][: args.docs]} for r in trec[: args.queries]]
    pool = sorted({d for r in trec[100:140] for d in r["documents"]}, key=len)
    defaults = (args.queries, args.docs, args.rounds, args.latency_runs) == (4, 20, 3, 5)
    report = {"machine": machine_name(), "cpu_flags": _cpu_flags(), "threads": threads, "load_start": _load(),
              "gemm_gflops": gemm_gflops(),
              "command": "python benchmarks/families_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "run": "Full run." if defaults else "REDUCED run (fewer pairs/rounds than the defaults: the machine "
                                                  "is shared), so the figures are rough.",
              "queries": args.queries, "docs": args.docs, "rounds": args.rounds, "latency_runs": args.latency_runs,
              "families": {}}
    for family in args.families:
        paths = prepare(family, "real", folder, fidelity_data)
        result = bench_family(family, paths, workload, pool, threads, args.rounds, args.latency_runs)
        result["export"] = {precision: export_figures(paths[precision]) for precision in ("fp32", "int8")}
        report["families"][family] = result
        write_report(Path(args.out), {**report, "load_end": _load()})  # a partial report survives a later failure
    report["tiny"] = None if args.no_tiny else tiny_fidelity(folder)
    report["load_end"] = _load()
    write_report(Path(args.out), report)
    print((Path(args.out) / "families.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
