"""Where the time goes: onnxruntime's per-operator profile of artifacts on TREC RAG pairs.

    python benchmarks/profile_ops.py ART [ART ...] [--pairs 200] [--optimization all] [--out FILE.md]

Each model runs exactly as in production (the same constructor, settings, session builder and
graph check); only ONNX Runtime's profiler is switched on (``SessionOptions(profile_prefix=...)``),
so the profile is of exactly what the runtime runs, batches included (a Reranker's length-sorted
token-budget batches, or an Embedder's). Prints, per artifact, the kernel time per operator type and its share; with several
artifacts, also each operator's time relative to the first artifact's total (same pairs, same
run: the artifacts are profiled in turn, ``--rounds`` times, and the medians are kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import crossrank
from crossrank.artifact import load_artifact
from crossrank.evaluation.datasets import load_semanlink, load_trec_rag
from crossrank.settings import GRAPH_OPTIMIZATIONS, physical_cores


def _model(path: str, threads: int, optimization: str, prefix: str, batch_tokens: int | None = None):
    cls = crossrank.Reranker if load_artifact(path).kind == "cross" else crossrank.Embedder
    return cls(path, options=crossrank.SessionOptions(threads=threads, batch_tokens=batch_tokens,
                                                      optimization=optimization, profile_prefix=prefix))


def profile_once(path: str, pairs, texts, threads: int, optimization: str, prefix: str,
                 batch_tokens: int | None = None) -> dict[str, float]:
    """Kernel milliseconds per operator type for one pass over the workload."""
    model = _model(path, threads, optimization, prefix, batch_tokens)
    if isinstance(model, crossrank.Reranker):
        model.score(pairs)
    else:
        model.embed(texts)
    trace = model.end_profiling()
    per_op: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3
    trace.unlink()
    return dict(per_op)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", help="artifact folders (cross: TREC RAG pairs; bi: Semanlink texts)")
    parser.add_argument("--pairs", type=int, default=200, help="TREC RAG pairs / Semanlink texts to run (default 200)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--optimization", default="all", choices=GRAPH_OPTIMIZATIONS,
                        help="graph optimisation level at load (default all)")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="token budget per model call (default: the runtime's)")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.rounds < 1:
        parser.error(f"--pairs and --rounds must be >= 1, got {args.pairs} and {args.rounds}")
    threads = args.threads or physical_cores()
    pairs = [(r["query"], d) for r in load_trec_rag()[::5] for d in r["documents"]][: args.pairs]
    texts = [d.text for d in load_semanlink()[0][: args.pairs]]
    runs: dict[str, list[dict[str, float]]] = {a: [] for a in args.artifacts}
    with tempfile.TemporaryDirectory(prefix="crossrank-profile-") as scratch:
        for _ in range(args.rounds):
            for artifact in args.artifacts:
                runs[artifact].append(profile_once(artifact, pairs, texts, threads, args.optimization,
                                                   str(Path(scratch) / "profile"), args.batch_tokens))
    medians = {a: {op: statistics.median(r.get(op, 0.0) for r in rs) for op in set().union(*rs)}
               for a, rs in runs.items()}
    base_total = sum(medians[args.artifacts[0]].values())
    lines = [f"Per-operator kernel time, {len(pairs)} items, {threads} threads, optimization "
             f"{args.optimization!r}, median of {args.rounds} interleaved round(s). "
             f"Command: `python benchmarks/profile_ops.py {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    for artifact, per_op in medians.items():
        total = sum(per_op.values())
        lines += [f"### {artifact}: kernel time {total:.0f} ms ({total / base_total:.2f} x the first artifact's)", "",
                  "| operator | ms | share | x first total |", "|---|---:|---:|---:|"]
        for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
            if ms / total >= 0.005:
                lines.append(f"| {op} | {ms:.0f} | {ms / total:.1%} | {ms / base_total:.3f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
