"""Fidelity of a cross-encoder artifact against its PyTorch source on the TREC RAG workload.

The export measures fidelity on Semanlink; this checks the same figures on out-of-domain web
passages (every 30th TREC RAG 2024 query with its 20 passages, max_length 512):

    python benchmarks/workload_fidelity.py artifacts/starter-reranker-int8 models/starter-reranker
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from crossrank.evaluation.datasets import load_trec_rag
from crossrank.evaluation.metrics import spearman, top_k_agreement
from crossrank.reranker import Reranker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", help="cross-encoder artifact folder")
    parser.add_argument("source", help="the Hugging Face folder it was exported from")
    parser.add_argument("--every", type=int, default=30, help="take every N-th query (default 30: 11 queries)")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = load_trec_rag()[:: args.every]
    pairs = [(row["query"], doc) for row in rows for doc in row["documents"]]
    tokenizer = AutoTokenizer.from_pretrained(args.source)
    model = AutoModelForSequenceClassification.from_pretrained(args.source, dtype=torch.float32).eval()
    reference = []
    with torch.inference_mode():
        for start in range(0, len(pairs), 16):
            part = pairs[start: start + 16]
            batch = tokenizer([q for q, _ in part], [d for _, d in part], padding=True,
                              truncation="only_second", max_length=512, return_tensors="pt")
            reference.extend(model(**batch).logits[:, 0].tolist())
    reference = np.array(reference)
    scores = Reranker(args.artifact, max_length=512).score(pairs, raw_scores=True).astype(np.float64)
    per_query = [spearman(reference[i: i + 20], scores[i: i + 20]) for i in range(0, len(pairs), 20)]
    print(f"{args.artifact} vs PyTorch {args.source}: {len(rows)} TREC RAG queries, {len(pairs)} pairs")
    print(f"  max abs diff of logits {np.abs(scores - reference).max():.4g} (reference std {reference.std():.3f})")
    print(f"  Spearman {spearman(reference, scores):.4f}, mean per-query Spearman {np.mean(per_query):.4f}, "
          f"top-10 agreement {top_k_agreement(reference, scores, 10):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
