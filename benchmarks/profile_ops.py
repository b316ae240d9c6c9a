"""Where the time goes: onnxruntime's per-operator profile of a reranker artifact on TREC pairs.

    python benchmarks/profile_ops.py artifacts/starter-reranker-int8 [--pairs 200]

The Reranker runs exactly as in production (same settings, same session builder); only ONNX
Runtime's profiler is switched on. Prints the share of kernel time per operator type (shares are
ratios within one run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import crossrank
from crossrank.evaluation.datasets import load_trec_rag
from crossrank.runner import BatchRunner


def profile(artifact: str | Path, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Kernel milliseconds per operator type while ``Reranker(artifact).score(pairs)`` runs."""
    reranker = crossrank.Reranker(artifact)
    with tempfile.TemporaryDirectory() as scratch:
        reranker.runner = BatchRunner(reranker.artifact.model_path, reranker.runner.settings,
                                      profile_prefix=str(Path(scratch) / "profile"))
        reranker.score(pairs)
        trace = Path(reranker.runner.session.end_profiling())
        per_op: dict[str, float] = defaultdict(float)
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"] / 1e3
    return dict(per_op)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="cross-encoder artifact folder")
    parser.add_argument("--pairs", type=int, default=200, help="TREC RAG pairs to run (default 200)")
    args = parser.parse_args(argv)
    pairs = [(r["query"], d) for r in load_trec_rag()[::5] for d in r["documents"]][: args.pairs]
    per_op = profile(args.artifact, pairs)
    total = sum(per_op.values())
    print(f"{args.artifact}: {len(pairs)} pairs, kernel time {total:.0f} ms")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
        if ms / total >= 0.005:
            print(f"  {op:28s} {ms:9.0f} ms  {ms / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
