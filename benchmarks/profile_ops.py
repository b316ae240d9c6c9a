"""Where the time goes: onnxruntime's per-operator profile of a reranker artifact on TREC pairs.

    python benchmarks/profile_ops.py artifacts/bench-cross-fp32 [--pairs 200]

Prints the share of kernel time per operator type (shares are ratios within one run).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

import crossrank
from crossrank.datasets import load_trec_rag
from crossrank.session import physical_cores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="cross-encoder artifact folder")
    parser.add_argument("--pairs", type=int, default=200, help="TREC RAG pairs to run (default 200)")
    args = parser.parse_args(argv)
    reranker = crossrank.Reranker(args.artifact)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = physical_cores()
    options.profile_file_prefix = "/tmp/crossrank-profile"
    reranker.runner.session = ort.InferenceSession(str(reranker.artifact.model_path), options,
                                                   providers=["CPUExecutionProvider"])
    pairs = [(r["query"], d) for r in load_trec_rag()[::5] for d in r["documents"]][: args.pairs]
    reranker.score(pairs)
    trace = Path(reranker.runner.session.end_profiling())
    per_op: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3
    trace.unlink()
    total = sum(per_op.values())
    print(f"{args.artifact}: {len(pairs)} pairs, kernel time {total:.0f} ms")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
        if ms / total >= 0.005:
            print(f"  {op:28s} {ms:9.0f} ms  {ms / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
