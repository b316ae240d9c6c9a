"""Which OpenVINO: the ``openvino`` runtime (crossrank's backend) or onnxruntime's OpenVINO
execution provider? Same graph (the starter reranker's fp32 artifact), same length-sorted
~4,096-token batches of TREC RAG pairs, 2 threads, interleaved rounds, ratios inside one process.

    # 1. in crossrank's venv: tokenize, then ONNX Runtime CPU (default spinning, and "never") vs the
    #    openvino runtime
    python benchmarks/openvino_ep_probe.py prepare --pairs 200 --out .cache/ep-probe.npz
    # 2. in a throwaway venv (onnxruntime-openvino replaces the onnxruntime module):
    #    python -m venv /tmp/ovep && /tmp/ovep/bin/pip install onnxruntime-openvino==1.24.1 numpy
    /tmp/ovep/bin/python benchmarks/openvino_ep_probe.py ep --batches .cache/ep-probe.npz

Step 2 needs only numpy and onnxruntime-openvino (no crossrank): it builds its two sessions itself
(CPU EP and OpenVINO EP, f32, or bf16 with --precision bf16 on AMX/AVX-512 BF16), which is why
this probe, unlike the runtime, does not go through crossrank.session.build_session.
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

ROOT = Path(__file__).resolve().parent.parent


def _timed_rounds(runners: dict, batches: list[dict], rounds: int) -> tuple[dict, dict]:
    """Interleaved rounds: every runner scores all batches in turn; (median seconds, logits) per runner."""
    seconds = {name: [] for name in runners}
    logits = {}
    for name, run in runners.items():
        run(batches[0])  # warm-up
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            logits[name] = np.concatenate([run(b).reshape(-1) for b in batches])
            seconds[name].append(time.perf_counter() - start)
    return {n: statistics.median(s) for n, s in seconds.items()}, logits


def prepare(args) -> int:
    from crossrank.batching import assemble_batch, plan_batches
    from crossrank.evaluation.datasets import load_trec_rag
    from crossrank.export import ensure_artifact
    from crossrank.front.measure import machine_name
    from crossrank.session import build_session
    from crossrank.tokenize import PairTokenizer

    starter = ROOT / "models" / "starter-reranker"
    artifact = ensure_artifact(starter, ROOT / "artifacts" / "starter-reranker-fp32", "cross", "fp32")[0]
    rows = load_trec_rag()
    pairs = [(r["query"], d) for r in rows for d in r["documents"]][: args.pairs]
    tokenizer = PairTokenizer(artifact.tokenizer_path, artifact.max_length)
    queries = sorted({q for q, _ in pairs})
    query_of = np.asarray([queries.index(q) for q, _ in pairs], dtype=np.int64)
    tokens = tokenizer.pair_rows(tokenizer.encode_texts(queries), query_of, tokenizer.encode_texts([d for _, d in pairs]))
    batches = []
    for chosen in plan_batches(tokens.lengths, 4096, 256, order="length"):
        batch = assemble_batch(chosen, tokens.ids, tokens.types, tokenizer.pad_id)
        batches.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                        "token_type_ids": batch.token_type_ids})
    sessions = {"onnxruntime CPU EP": build_session(artifact.model_path, threads=args.threads),
                "onnxruntime CPU EP, spinning never": build_session(artifact.model_path, threads=args.threads,
                                                                    spinning="never"),
                "openvino runtime f32": build_session(artifact.model_path, threads=args.threads, backend="openvino")}
    names = {i.name for i in sessions["onnxruntime CPU EP"].get_inputs()}
    runners = {n: (lambda b, s=s: s.run(None, {k: v for k, v in b.items() if k in names})[0])
               for n, s in sessions.items()}
    seconds, logits = _timed_rounds(runners, batches, args.rounds)
    report(seconds, logits, len(pairs), "onnxruntime CPU EP", machine_name(), args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, n_batches=len(batches), n_pairs=len(pairs), reference=logits["onnxruntime CPU EP"],
             model=str(artifact.model_path), **{f"{k}_{i}": v for i, b in enumerate(batches) for k, v in b.items()})
    print(f"wrote {out}: {len(batches)} batches")
    return 0


def ep(args) -> int:
    import onnxruntime as ort

    data = np.load(args.batches)
    names = ("input_ids", "attention_mask", "token_type_ids")
    batches = [{k: data[f"{k}_{i}"] for k in names if f"{k}_{i}" in data} for i in range(int(data["n_batches"]))]
    model = str(data["model"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    cpu = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    config = {"device_type": "CPU", "num_of_threads": str(args.threads)}
    if args.precision == "bf16":
        config["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})
    start = time.perf_counter()
    openvino = ort.InferenceSession(model, options, providers=[("OpenVINOExecutionProvider", config)])
    loaded = time.perf_counter() - start
    inputs = {i.name for i in cpu.get_inputs()}
    runners = {"onnxruntime CPU EP": lambda b: cpu.run(None, {k: v for k, v in b.items() if k in inputs})[0],
               f"onnxruntime OpenVINO EP {args.precision}":
                   lambda b: openvino.run(None, {k: v for k, v in b.items() if k in inputs})[0]}
    seconds, logits = _timed_rounds(runners, batches, args.rounds)
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}; OpenVINO EP session load "
          f"{loaded:.2f} s")
    report(seconds, logits, int(data["n_pairs"]), "onnxruntime CPU EP", _cpu(), args)
    return 0


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags"))
        return f"{model}, ISA {' '.join(f for f in flags if f.startswith(('avx2', 'avx512', 'amx')))}"
    except (OSError, StopIteration):
        return "unknown CPU"


def report(seconds: dict, logits: dict, n_pairs: int, base: str, machine: str, args) -> None:
    print(f"{machine}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {n_pairs} pairs, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds")
    for name, s in seconds.items():
        diff = float(np.max(np.abs(logits[name].astype(np.float64) - logits[base])))
        print(f"  {name}: {n_pairs / s:.1f} pairs/s ({seconds[base] / s:.2f} x {base}); max abs logit diff {diff:.2g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="tokenize; ONNX Runtime CPU vs the openvino runtime (crossrank's venv)")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / ".cache" / "ep-probe.npz"))
    e = sub.add_parser("ep", help="ONNX Runtime CPU EP vs its OpenVINO EP (a venv with onnxruntime-openvino)")
    e.add_argument("--batches", default=str(ROOT / ".cache" / "ep-probe.npz"))
    e.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    for q in (p, e):
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    return prepare(args) if args.step == "prepare" else ep(args)


if __name__ == "__main__":
    sys.exit(main())
