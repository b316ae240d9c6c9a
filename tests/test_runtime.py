"""Reranker and Embedder on real weights and real passages: fidelity, batching, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tokenizers import Tokenizer

import crossrank
from crossrank.batching import padding_fraction, plan_batches
from crossrank.evaluation.metrics import spearman
from crossrank.session import cuda_available
from crossrank.tokenize import PairTokenizer


@pytest.fixture(scope="module")
def reranker(cross_fp32):
    return crossrank.Reranker(cross_fp32)


@pytest.fixture(scope="module")
def passages(trec_rag):
    return [(row["query"], row["documents"]) for row in trec_rag[:3]]


def test_pair_ids_equal_tokenizer_encode(cross_fp32, trec_rag):
    """numpy-assembled pair ids == tokenizers' own encode(q, d) with only_second truncation."""
    reference = Tokenizer.from_file(str(cross_fp32 / "tokenizer.json"))
    for max_length in (512, 128):
        reference.enable_truncation(max_length, strategy="only_second")
        pairs = PairTokenizer(cross_fp32 / "tokenizer.json", max_length)
        for row in trec_rag[:10]:
            rows = pairs.pair_rows(pairs.encode_texts([row["query"]]), np.zeros(20, dtype=np.int64),
                                   pairs.encode_texts(row["documents"]))
            for doc, ids, types in zip(row["documents"], rows.ids, rows.types):
                want = reference.encode(row["query"], doc)
                assert ids.tolist() == want.ids
                assert types.tolist() == want.type_ids
                assert len(ids) <= max_length


def test_scores_equal_pytorch(reranker, seeded_cross_src, passages):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(seeded_cross_src)
    model = AutoModelForSequenceClassification.from_pretrained(seeded_cross_src).eval()
    pairs = [(q, d) for q, docs in passages for d in docs]
    with torch.inference_mode():
        enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation="only_second",
                        max_length=512, padding=True, return_tensors="pt")
        want = model(**enc).logits[:, 0].numpy()
    got = reranker.score(pairs, raw_scores=True)
    assert np.abs(got - want).max() <= 1e-4
    np.testing.assert_allclose(reranker.score(pairs), 1 / (1 + np.exp(-want)), atol=1e-5)


def test_int8_reranker_tracks_fp32(cross_fp32, cross_int8_seeded, passages):
    """Seeded (untrained) head: logits are flat, so int8 is held to 0.95 here; the trained starter
    reranker carries the 0.99 bar."""
    pairs = [(q, d) for q, docs in passages for d in docs]
    fp32 = crossrank.Reranker(cross_fp32).score(pairs, raw_scores=True)
    int8 = crossrank.Reranker(cross_int8_seeded).score(pairs, raw_scores=True)
    assert spearman(fp32, int8) >= 0.95


def test_embedder_equals_sentence_transformers(bi_fp32, minilm_path):
    from sentence_transformers import SentenceTransformer

    from crossrank.evaluation.datasets import load_semanlink

    documents, _ = load_semanlink()
    texts = [d.text for d in documents[:64]] + ["", "a"]
    model = SentenceTransformer(str(minilm_path), device="cpu")
    assert model.max_seq_length == 256
    want = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    got = crossrank.Embedder(bi_fp32).embed(texts)
    assert got.dtype == np.float32 and got.shape == (66, 384)
    cosine = (got * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999


def test_score_order_does_not_depend_on_batching(reranker, passages):
    pairs = [(q, d) for q, docs in passages for d in docs]
    scores = reranker.score(pairs)
    permutation = np.random.default_rng(0).permutation(len(pairs))
    shuffled = reranker.score([pairs[i] for i in permutation])
    np.testing.assert_allclose(shuffled, scores[permutation], atol=1e-6)
    one_by_one = np.array([reranker.score([p])[0] for p in pairs[:5]])
    np.testing.assert_allclose(one_by_one, scores[:5], atol=1e-6)


def test_rerank_ranks_by_score(reranker, passages):
    query, docs = passages[0]
    scores = reranker.score([(query, d) for d in docs])
    ranked = reranker.rerank(query, docs)
    assert [r.index for r in ranked] == np.argsort(-scores, kind="stable").tolist()
    assert [r.document for r in ranked] == [docs[r.index] for r in ranked]
    top = reranker.rerank(query, docs, top_n=3, return_documents=False, raw_scores=True)
    assert [r.index for r in top] == [r.index for r in ranked[:3]]
    assert all(r.document is None for r in top)
    np.testing.assert_allclose([1 / (1 + np.exp(-r.score)) for r in top], [r.score for r in ranked[:3]], atol=1e-6)


def test_rerank_many_equals_separate_calls(reranker, passages):
    queries = [q for q, _ in passages]
    doc_lists = [docs[:7] for _, docs in passages]
    together = reranker.rerank_many(queries, doc_lists, top_n=5)
    for query, docs, result in zip(queries, doc_lists, together):
        alone = reranker.rerank(query, docs, top_n=5)
        assert [r.index for r in result] == [r.index for r in alone]
        np.testing.assert_allclose([r.score for r in result], [r.score for r in alone], atol=1e-6)


def test_chunk_mode_scores_the_best_window(cross_fp32, passages):
    query, docs = passages[0]
    truncate = crossrank.Reranker(cross_fp32, max_length=128)
    chunk = crossrank.Reranker(cross_fp32, max_length=128, long_documents="chunk", chunk_overlap=32)
    tokens = chunk.tokenizer
    long_doc = " ".join(docs[1:6])
    doc_ids = tokens.encode_texts([long_doc])[0]
    q_ids = tokens.encode_texts([query])
    rows = tokens.pair_rows(q_ids, np.zeros(1, dtype=np.int64), [doc_ids], chunk_overlap=32)
    budget = tokens.document_budget(q_ids[0])
    assert len(rows.ids) > 1 and all(len(r) <= 128 for r in rows.ids)
    # The windows cover the whole document and overlap by 32 tokens.
    head = len(rows.ids[0]) - budget - len(tokens.template.suffix)
    windows = [r[head: len(r) - len(tokens.template.suffix)] for r in rows.ids]
    stride = budget - 32
    assert all((w[:32] == windows[i - 1][stride: stride + 32]).all() for i, w in enumerate(windows) if i)
    assert np.concatenate([w[: stride] for w in windows[:-1]] + [windows[-1]]).tolist() == doc_ids.tolist()
    # Chunk score = best window score; the first window is the truncated document.
    window_logits, _ = chunk._encode_core(rows)
    got = chunk.score([(query, long_doc)], raw_scores=True)[0]
    assert got == pytest.approx(window_logits.max(), abs=1e-6)
    assert got >= truncate.score([(query, long_doc)], raw_scores=True)[0] - 1e-6
    short = docs[0][:100]
    assert chunk.score([(query, short)])[0] == pytest.approx(truncate.score([(query, short)])[0], abs=1e-6)


def test_thread_safety(reranker, passages):
    query, docs = passages[1]
    expected = reranker.rerank(query, docs)
    results, errors = [None] * 8, []

    def work(slot):
        try:
            results[slot] = reranker.rerank(query, docs)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == expected for r in results)


def test_bad_input(reranker):
    with pytest.raises(TypeError, match="query must be a str"):
        reranker.rerank(None, ["a"])
    with pytest.raises(ValueError, match="query is empty"):
        reranker.rerank("   ", ["a"])
    assert reranker.rerank("q", []) == []
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        reranker.rerank("q", ["a", None])
    with pytest.raises(TypeError, match=r"documents\[0\]"):
        reranker.rerank("q", [3])
    with pytest.raises(TypeError, match="list of str"):
        reranker.rerank("q", "just one string")
    with pytest.raises(ValueError, match="top_n"):
        reranker.rerank("q", ["a"], top_n=0)
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        reranker.score(["not a pair"])
    assert len(reranker.rerank("q", ["", "a document"])) == 2  # empty strings are scored
    with pytest.raises(ValueError, match=r"max_length must be an integer in \[8, 512\] or None, got 4096"):
        crossrank.Reranker(reranker.artifact.path, max_length=4096)
    with pytest.raises(ValueError, match="'window'"):
        crossrank.Reranker(reranker.artifact.path, long_documents="window")
    with pytest.raises(crossrank.ArtifactError, match="bi-encoder"):
        crossrank.Embedder(reranker.artifact.path)


@pytest.mark.skipif(cuda_available(), reason="checks the CPU-only error path")
def test_cuda_without_provider_is_a_clear_error(cross_fp32):
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        crossrank.Reranker(cross_fp32, device="cuda")


@pytest.mark.skipif(not cuda_available(), reason="no CUDAExecutionProvider here (CPU-only onnxruntime)")
def test_cuda_matches_cpu(cross_fp32, passages):
    pairs = [(q, d) for q, docs in passages for d in docs]
    cpu = crossrank.Reranker(cross_fp32).score(pairs, raw_scores=True)
    gpu = crossrank.Reranker(cross_fp32, device="cuda").score(pairs, raw_scores=True)
    assert np.abs(cpu - gpu).max() < 1e-3


def test_plan_batches_respects_budget():
    lengths = np.random.default_rng(0).integers(1, 512, size=1000)
    batches = plan_batches(lengths, batch_tokens=4096)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 4096
    assert padding_fraction(lengths, batches) < 0.05
    assert padding_fraction(lengths, [np.arange(1000)]) > 0.4  # unsorted single batch wastes ~half


def test_hundred_thousand_documents_in_bounded_batches(tiny_cross):
    reranker = crossrank.Reranker(tiny_cross, batch_tokens=4096)
    widths = []
    original = reranker.runner._run_batch

    def recording(feeds):
        widths.append(feeds["input_ids"].shape)
        return original(feeds)

    reranker.runner._run_batch = recording
    docs = [f"document number {i} " + "word " * (i % 50) for i in range(100_000)]
    scores = reranker.score([("a query", d) for d in docs])
    assert scores.shape == (100_000,) and np.isfinite(scores).all()
    assert max(rows * width for rows, width in widths) <= 4096
    assert sum(rows for rows, _ in widths) == 100_000
