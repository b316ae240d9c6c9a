"""A score is a function of the (query, document) pair and the model only, never of batch mates.

Real weights (the shipped starter reranker and the MiniLM bi-encoder, both exported with the
default int8 recipe) and real TREC RAG passages: a pair scored alone, among short mates at every
position, beside a mate that fills the 512-token window, and as one of a dozen identical copies, must
get the same logit (within 1e-5; the per-row int8 recipe gives bit-identical results here). The
batch-dependent per-tensor recipe fails the same check (last test): the check can fail.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from crossrank.artifact import MANIFEST, MODEL_FILE, sha256_file
from crossrank.embedder import Embedder
from crossrank.kernels.quantize import DEFAULT_INT8_RECIPE, get_recipe, quantize_int8
from crossrank.reranker import Reranker

TOLERANCE = 1e-5   # logit (cross) or embedding component (bi)
ONE_CALL = 1 << 20  # token budget that puts every row of a request into one model call


@pytest.fixture(scope="module")
def texts(trec_rag):
    """A TREC RAG query, three of its passages (targets), the eight shortest passages of the data
    set (short mates) and a mate of real passages joined past any model's window."""
    query = trec_rag[0]["query"]
    targets = trec_rag[0]["documents"][:3]
    pool = sorted({d for row in trec_rag[1:] for d in row["documents"]}, key=len)
    long_mate = " ".join(pool[-4:])
    return query, targets, pool[:8], long_mate


def _one_call(model, run) -> np.ndarray:
    before = model.runner.stats.batches
    out = run()
    assert model.runner.stats.batches == before + 1, "the request did not run as one model call"
    return out


def test_default_recipe_is_batch_invariant():
    assert get_recipe(DEFAULT_INT8_RECIPE).batch_invariant


def test_manifest_records_batch_invariance(starter_int8, bi_int8):
    for artifact in (starter_int8, bi_int8):
        manifest = json.loads((artifact / MANIFEST).read_text())
        assert manifest["quantization"]["name"] == DEFAULT_INT8_RECIPE
        assert manifest["quantization"]["batch_invariant"] is True
        assert manifest["fidelity"]["batch_invariance_max_abs_diff"] <= TOLERANCE


def test_cross_int8_score_is_independent_of_batch_mates(starter_int8, texts):
    query, targets, short, long_mate = texts
    reranker = Reranker(starter_int8, batch_tokens=ONE_CALL)
    lengths = reranker.tokenizer.pair_rows(reranker.tokenizer.encode_texts([query]), np.zeros(1, np.int64),
                                           reranker.tokenizer.encode_texts([long_mate])).lengths
    assert lengths[0] == reranker.max_length == 512
    worst = 0.0
    for target in targets:
        alone = reranker.score([(query, target)], raw_scores=True)[0]
        batches = []
        for position in (0, 4, len(short)):  # first, middle, last among short mates
            docs = short[:position] + [target] + short[position:]
            scores = _one_call(reranker, lambda: reranker.score([(query, d) for d in docs], raw_scores=True))
            batches.append(scores[position])
        for docs, position in (([long_mate, target], 1), ([target, long_mate], 0),
                               ([long_mate] + short[:3] + [target], 4)):
            scores = _one_call(reranker, lambda: reranker.score([(query, d) for d in docs], raw_scores=True))
            batches.append(scores[position])
        copies = _one_call(reranker, lambda: reranker.score([(query, target)] * 12 + [(query, long_mate)],
                                                            raw_scores=True))
        batches.extend(copies[:12])
        worst = max(worst, float(np.max(np.abs(np.asarray(batches) - alone))))
    assert worst <= TOLERANCE, f"a logit moved by {worst:.3g} with its batch mates"


def test_cross_int8_rerank_in_default_batches_equals_scoring_alone(starter_int8, texts):
    """The runtime's own length-sorted token-budget batches (default budget), as rerank runs them."""
    query, targets, short, long_mate = texts
    reranker = Reranker(starter_int8)
    docs = targets + short + [long_mate]
    ranked = reranker.rerank(query, docs, raw_scores=True)
    alone = {i: reranker.score([(query, d)], raw_scores=True)[0] for i, d in enumerate(docs)}
    diffs = [abs(r.score - alone[r.index]) for r in ranked]
    assert max(diffs) <= TOLERANCE, f"rerank moved a logit by {max(diffs):.3g}"


def _embedding_spread(embedder: Embedder, texts) -> float:
    _, targets, short, long_mate = texts
    worst = 0.0
    for target in targets:
        alone = embedder.embed([target])[0]
        together = [embedder.embed(short[:p] + [target] + short[p:])[p] for p in (0, 4, len(short))]
        together += [embedder.embed([long_mate, target])[1], embedder.embed([target, long_mate])[0]]
        together += list(embedder.embed([target] * 12 + [long_mate])[:12])
        worst = max(worst, float(np.max(np.abs(np.asarray(together) - alone))))
    return worst


def test_bi_int8_embedding_is_independent_of_batch_mates(bi_int8, texts):
    embedder = Embedder(bi_int8, batch_tokens=ONE_CALL)
    spread = _embedding_spread(embedder, texts)
    assert spread <= TOLERANCE, f"an embedding component moved by {spread:.3g} with its batch mates"


def test_the_check_catches_a_batch_dependent_recipe(bi_fp32, texts, tmp_path):
    """Negative control: the per-tensor dynamic recipe (one activation scale per batch) fails it."""
    recipe = get_recipe("dynamic-pertensor-batchdependent-u8s8-perchannel-rr")
    assert not recipe.batch_invariant
    artifact = tmp_path / "bi-pertensor"
    shutil.copytree(bi_fp32, artifact)
    quantize_int8(bi_fp32 / MODEL_FILE, artifact / MODEL_FILE, recipe)
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"][MODEL_FILE] = sha256_file(artifact / MODEL_FILE)
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    spread = _embedding_spread(Embedder(artifact, batch_tokens=ONE_CALL), texts)
    assert spread > 100 * TOLERANCE, f"per-tensor scales moved embeddings by only {spread:.3g}"
