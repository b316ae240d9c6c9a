"""How many times the server tokenizes each text of a request (issue 19: target 1).

    python tests/count_tokenizations.py RERANKER_ART [--embedder EMBEDDER_ART]

A measuring tool that instruments the models' tokenizers, so it lives with the tests (the core's
internals are theirs to read); tests/test_serve.py asserts the same count.

Builds the ``crossrank serve`` app in process (sharing off), wraps each model's Rust tokenizer in a
counter, sends one Cohere v2 /rerank request (with max_tokens_per_doc) and one TEI /rerank request
of TREC RAG passages (and, with --embedder, one OpenAI /v1/embeddings request), and prints how many
times each request's texts went through a tokenizer. Uses only what every version of the app has,
so another checkout's interpreter measures that checkout (e.g. /work/main/.venv/bin/python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from starlette.testclient import TestClient

from crossrank.evaluation.datasets import load_trec_rag
from crossrank.front.serve.app import build_app
from crossrank.front.serve.config import ServeConfig


class CountingTokenizer:
    """Wraps a Rust tokenizer; records every text it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.texts = inner, []

    def encode_batch(self, texts, *args, **kwargs):
        self.texts.extend(texts)
        return self.inner.encode_batch(texts, *args, **kwargs)

    def encode(self, text, *args, **kwargs):
        self.texts.append(text)
        return self.inner.encode(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def passes(counter: CountingTokenizer, texts: list[str]) -> float:
    """Tokenizer passes per text of the request: every text the tokenizer encoded while serving it
    (a document cut and encoded again counts again), over the texts sent."""
    return len(counter.texts) / len(texts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reranker", help="cross-encoder artifact folder")
    parser.add_argument("--embedder", default=None, help="bi-encoder artifact folder (adds /v1/embeddings)")
    args = parser.parse_args(argv)
    app = build_app(ServeConfig(reranker=args.reranker, embedder=args.embedder, shared=False))
    models = app.state.models
    models.load()
    counters = {}
    for name in ("reranker", "embedder"):
        model = getattr(models, name)
        if model is not None:
            counters[name] = model.tokenizer.tokenizer = CountingTokenizer(model.tokenizer.tokenizer)
    client = TestClient(app)
    row = load_trec_rag()[5]
    texts = [row["query"], *row["documents"]]
    names = {name: Path(path).name for name, path in (("reranker", args.reranker), ("embedder", args.embedder)) if path}
    requests = [("reranker", "/v2/rerank", {"model": names["reranker"], "query": row["query"],
                                            "documents": row["documents"], "max_tokens_per_doc": 32}, texts),
                ("reranker", "/rerank", {"query": row["query"], "texts": row["documents"]}, texts),
                ("embedder", "/v1/embeddings", {"model": names.get("embedder"), "input": row["documents"]},
                 row["documents"])]
    for model, path, body, sent in requests:
        if model not in counters:
            continue
        counters[model].texts.clear()
        status = client.post(path, json=body).status_code
        print(f"{path}: HTTP {status}, {len(sent)} texts, tokenizer passes per text {passes(counters[model], sent):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
