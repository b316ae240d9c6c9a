"""Cold start and per-call speed at each ONNX Runtime graph optimisation level, same run.

    python benchmarks/cold_start.py [ARTIFACT ...] [--rounds 5] [--pairs 160] [--out benchmarks/results]

The export already fused the graph (Attention, SkipLayerNormalization, BiasGelu, ...), so the
question is what the optimisation level at load still buys per call and what it costs at start.
For each artifact (default: the demo's int8 embedder and starter reranker, plus the starter's fp32
export) and each level (disable, basic, extended, all):

- cold start: a new Python process, from its start to its first result (import crossrank, load
  and verify the artifact, build the session, first call), median of --rounds, levels interleaved;
- session build and first call, timed inside those processes;
- pairs/s (texts/s) on TREC RAG pairs, levels taking turns on the same chunks in one process;
- whether the outputs are bit-identical to the "all" level's.

Writes cold_start.md and cold_start.json under --out. ``crossrank.settings.GRAPH_OPTIMIZATION`` is
the level the runtime uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import crossrank
from crossrank.artifact import load_artifact
from crossrank.evaluation.datasets import load_trec_rag
from crossrank.front.measure import machine_name
from crossrank.settings import GRAPH_OPTIMIZATION, GRAPH_OPTIMIZATIONS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACTS = ("artifacts/embedder-int8", "artifacts/starter-reranker-int8", "artifacts/starter-reranker-fp32")
CHILD = r"""
import sys, time, json
start = time.perf_counter()
import crossrank
imported = time.perf_counter()
kind, path, options = sys.argv[1], sys.argv[2], crossrank.SessionOptions(optimization=sys.argv[3])
model = (crossrank.Reranker if kind == "cross" else crossrank.Embedder)(path, options=options)
built = time.perf_counter()
if kind == "cross":
    model.rerank("what is a cross-encoder", ["A cross-encoder reads query and passage together."])
else:
    model.embed(["what is a bi-encoder"])
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": built - imported, "first_call_s": done - built}))
"""


def cold_starts(artifact, kind: str, rounds: int) -> dict[str, dict]:
    samples = {level: [] for level in GRAPH_OPTIMIZATIONS}
    for round_number in range(rounds):
        levels = GRAPH_OPTIMIZATIONS[round_number % 4:] + GRAPH_OPTIMIZATIONS[:round_number % 4]
        for level in levels:
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, kind, str(artifact), level], check=True,
                                 capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            record["process_s"] = time.perf_counter() - start
            samples[level].append(record)
    return {level: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
            for level, runs in samples.items()}


def steady(artifact, kind: str, pairs, texts, rounds: int) -> dict[str, dict]:
    """items/s per level (taking turns on the same chunks) and max abs difference from "all"."""
    cls = crossrank.Reranker if kind == "cross" else crossrank.Embedder
    models = {level: cls(artifact, options=crossrank.SessionOptions(optimization=level))
              for level in GRAPH_OPTIMIZATIONS}
    items = pairs if kind == "cross" else texts

    def run(level, chunk):
        model = models[level]
        return model.score(chunk, raw_scores=True) if kind == "cross" else model.embed(chunk)

    outputs = {level: run(level, items) for level in GRAPH_OPTIMIZATIONS}  # warm-up and outputs
    chunks = [items[i:i + 40] for i in range(0, len(items), 40)]
    seconds = {level: 0.0 for level in GRAPH_OPTIMIZATIONS}
    for round_number in range(rounds):
        for k, chunk in enumerate(chunks):
            for j in range(4):
                level = GRAPH_OPTIMIZATIONS[(j + k + round_number) % 4]
                start = time.perf_counter()
                run(level, chunk)
                seconds[level] += time.perf_counter() - start
    reference = outputs["all"]
    return {level: {"items_per_s": rounds * len(items) / seconds[level],
                    "max_abs_diff_vs_all": float(np.abs(outputs[level] - reference).max())}
            for level in GRAPH_OPTIMIZATIONS}


def ensure_starter_fp32(path: Path) -> None:
    if not (path / "manifest.json").is_file():
        from crossrank.export import ensure_artifact

        ensure_artifact(ROOT / "models" / "starter-reranker", path, "cross", "fp32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="*", default=list(DEFAULT_ARTIFACTS), help="artifact folders")
    parser.add_argument("--rounds", type=int, default=5, help="cold starts per level, and steady rounds (default 5)")
    parser.add_argument("--pairs", type=int, default=160, help="TREC RAG pairs (texts) per steady round (default 160)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    workload = load_trec_rag()[::7]
    pairs = [(r["query"], d) for r in workload for d in r["documents"]][: args.pairs]
    texts = [d for _, d in pairs]
    rows = []
    for artifact in args.artifacts:
        if artifact.endswith("starter-reranker-fp32"):
            ensure_starter_fp32(Path(artifact))
        loaded = load_artifact(artifact)
        print(f"{artifact} ...", file=sys.stderr, flush=True)
        cold = cold_starts(artifact, loaded.kind, args.rounds)
        fast = steady(artifact, loaded.kind, pairs, texts, max(1, args.rounds // 2))
        for level in GRAPH_OPTIMIZATIONS:
            rows.append({"artifact": artifact, "kind": loaded.kind, "precision": loaded.precision, "level": level,
                         **cold[level], **fast[level]})
    lines = ["# Graph optimisation level at load: cold start and speed (same run)", "",
             f"Machine: {machine_name()}. Command: `python benchmarks/cold_start.py {' '.join(argv or sys.argv[1:])}`. "
             f"Runtime default: `{GRAPH_OPTIMIZATION}`. Cold start = new process to first result, median of "
             f"{args.rounds}; items/s = levels taking turns on the same {len(pairs)} TREC RAG pairs (texts).", "",
             "| artifact | level | cold start s | import s | load s | first call s | items/s | x all | "
             "max abs diff vs all |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["artifact"] == row["artifact"] and r["level"] == "all")
        lines.append(f"| {Path(row['artifact']).name} | {row['level']} | {row['process_s']:.2f} | {row['import_s']:.2f} | "
                     f"{row['load_s']:.3f} | {row['first_call_s']:.3f} | {row['items_per_s']:.1f} | "
                     f"{row['items_per_s'] / base['items_per_s']:.2f} | {row['max_abs_diff_vs_all']:.2g} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
