#!/usr/bin/env bash
# CUDA check for a lent GPU machine (see ../shared/GPU.md): < 5 minutes.
# Needs onnxruntime-gpu importable (PYTHONPATH=/tmp/site after installing the carried wheel) and
# artifacts exported here on the CPU first:
#   crossrank export artifacts/bench-cross-src artifacts/gpu/cross-fp32 --kind cross --precision fp32 --allow-low-fidelity
#   crossrank export artifacts/bench-cross-src artifacts/gpu/cross-fp16 --kind cross --precision fp16 --allow-low-fidelity
# Usage: bash benchmarks/gpu_check.sh artifacts/gpu artifacts/bench-cross-src [.cache/study1_retrieval.jsonl.gz]
set -euo pipefail
ART=${1:-artifacts/gpu}
SRC=${2:-artifacts/bench-cross-src}
export CROSSRANK_CACHE=$(dirname "${3:-.cache/study1_retrieval.jsonl.gz}")
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)/build-src"
# The GPU machine has no editable install: map the package folders for this run.
mkdir -p build-src/crossrank
cp -r engine/. build-src/crossrank/ && cp -r export build-src/crossrank/export && cp -r kernels build-src/crossrank/kernels
python3 - "$ART" "$SRC" <<'PY'
import sys, time, numpy as np, onnxruntime as ort
print("providers:", ort.get_available_providers())
import crossrank
from crossrank.evaluation.datasets import load_trec_rag
art, src = sys.argv[1], sys.argv[2]
rows = load_trec_rag()[::5]
pairs = [(r["query"], d) for r in rows for d in r["documents"]]
cpu_ref = crossrank.Reranker(f"{art}/cross-fp32", device="cpu").score(pairs[:200], raw_scores=True)
table = []
for precision in ("fp32", "fp16"):
    for io in (False, True):
        rr = crossrank.Reranker(f"{art}/cross-{precision}", device="cuda", io_binding=io)
        rr.score(pairs[:64])
        got = rr.score(pairs[:200], raw_scores=True)
        t = time.perf_counter(); rr.score(pairs); dt = time.perf_counter() - t
        table.append((f"crossrank {precision} io_binding={io}", len(pairs) / dt, float(np.abs(got - cpu_ref).max())))
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained(src)
model = AutoModelForSequenceClassification.from_pretrained(src, torch_dtype=torch.float16).cuda().eval()
def torch_score(ps):
    out = []
    for i in range(0, len(ps), 64):
        enc = tok([p[0] for p in ps[i:i+64]], [p[1] for p in ps[i:i+64]], truncation="only_second",
                  max_length=512, padding=True, return_tensors="pt").to("cuda")
        with torch.inference_mode():
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())
    return np.concatenate(out)
torch_score(pairs[:64]); torch.cuda.synchronize()
got = torch_score(pairs[:200])
t = time.perf_counter(); torch_score(pairs); torch.cuda.synchronize(); dt = time.perf_counter() - t
table.append(("transformers torch fp16 (batch 64)", len(pairs) / dt, float(np.abs(got - cpu_ref).max())))
print(f"\n{'system':40s} {'pairs/s':>10s} {'max|d| vs CPU fp32':>20s}")
for name, rate, diff in table:
    print(f"{name:40s} {rate:10.1f} {diff:20.2e}")
PY
