"""Long texts cost what their window holds (issue 24): the core cuts a text to a character budget
at a word boundary before tokenizing it (``crossrank.tokenize.encode_prefixes``), with the same ids
as the whole text, and refuses a call past its token budget before running it.

Models: the tiny generated cross-encoder (its tokenizer is MiniLM's) and the real MiniLM
bi-encoder in fp32; texts: real Semanlink documents and TREC RAG passages, joined into long ones,
plus texts made to defeat a character cut (whitespace floods, very long words, no spaces).
"""

from __future__ import annotations

import pytest

import crossrank
from crossrank.evaluation.datasets import load_semanlink
from crossrank.settings import CUT_MAX_CHARS_PER_TOKEN, CUT_MIN_CHARS
from crossrank.tokenize import encode_prefixes

from count_tokenizations import CountingTokenizer  # the tests' tokenizer counter


def characters(counter: CountingTokenizer) -> int:
    return sum(len(text) for text in counter.texts)


@pytest.fixture(scope="module")
def long_texts():
    texts = [d.text for d in load_semanlink()[0][:3000]]
    joined = [" ".join(texts[i: i + 30]) for i in range(0, 3000, 30)]
    tricky = ["word\r\n  " * 5000, "a  b\t\t" * 8000, "x" * 50000, "." * 20000 + " end", "漢字かな" * 5000,
              "short", "", "naïve café " * 3000, "https://example.org/" + "a/b-c_d.e?" * 3000]
    return joined + tricky


@pytest.mark.parametrize("keep", [1, 16, 128, 509])
def test_prefix_ids_equal_the_whole_texts_ids(tiny_cross, long_texts, keep):
    tokenizer = crossrank.Reranker(tiny_cross).tokenizer.tokenizer
    whole = tokenizer.encode_batch(long_texts, add_special_tokens=False)
    cut = encode_prefixes(tokenizer, long_texts, keep)
    for text, a, b in zip(long_texts, whole, cut):
        assert a.ids[:keep] == b.ids[:keep], text[:60]


def test_a_whitespace_flood_is_read_no_further_than_the_ceiling(tiny_cross):
    """The one documented inexactness: past CUT_MAX_CHARS_PER_TOKEN characters per token, a text is
    read no further (here its words after 100,000 spaces are not seen: past CUT_MIN_CHARS)."""
    tokenizer = crossrank.Reranker(tiny_cross).tokenizer.tokenizer
    text = "first" + " " * 100_000 + "second third"
    assert [e.ids for e in encode_prefixes(tokenizer, [text], 4)] == [tokenizer.encode("first",
                                                                                      add_special_tokens=False).ids]


def test_a_5_mb_document_is_tokenized_only_as_far_as_its_window(tiny_cross, long_texts):
    reranker = crossrank.Reranker(tiny_cross)
    big = (" ".join(long_texts[:100]) * 20)[:5_000_000]
    counting = reranker.tokenizer.tokenizer = CountingTokenizer(reranker.tokenizer.tokenizer)
    ranked = reranker.rerank("knowledge graphs", [big, "a short one"])
    assert characters(counting) <= max(reranker.max_length * CUT_MAX_CHARS_PER_TOKEN, CUT_MIN_CHARS) + 100
    plain = crossrank.Reranker(tiny_cross)
    window = plain.tokenizer.tokenizer.encode(big[:100_000], add_special_tokens=False).offsets[600][1]
    assert [(r.index, r.score) for r in ranked] == [(r.index, r.score) for r in
                                                    plain.rerank("knowledge graphs", [big[:window], "a short one"])]


def test_the_embedder_reads_long_texts_only_as_far_as_its_window(bi_fp32, long_texts):
    embedder = crossrank.Embedder(bi_fp32)
    inner = embedder.tokenizer.tokenizer
    counting = embedder.tokenizer.tokenizer = CountingTokenizer(inner)
    texts = [" ".join(long_texts[i: i + 4]) for i in range(0, 32, 4)]  # ~30,000 characters each
    rows = embedder.tokenizer.rows(texts)
    assert characters(counting) < sum(len(t) for t in texts) / 4
    whole = inner.encode_batch(texts, add_special_tokens=True)  # every character read, then truncated
    assert [r.tolist() for r in rows.ids] == [e.ids for e in whole]


def test_max_tokens_and_windows_bound_what_is_read(tiny_cross, long_texts):
    reranker = crossrank.Reranker(tiny_cross, long_documents="chunk")
    counting = reranker.tokenizer.tokenizer = CountingTokenizer(reranker.tokenizer.tokenizer)
    big = " ".join(long_texts[:60])
    for options in ({"max_chunks_per_doc": 2}, {"max_tokens_per_doc": 40}):
        counting.texts.clear()
        got = reranker.rerank("knowledge graphs", [big], **options)
        assert characters(counting) < len(big) / 4, options
        prefix = reranker.rerank("knowledge graphs", [big[:100_000]], **options)  # holds more than 2 windows
        assert (got[0].score, got.tokens) == (prefix[0].score, prefix.tokens), options


def test_a_call_past_its_token_budget_runs_nothing(tiny_cross, bi_fp32):
    reranker = crossrank.Reranker(tiny_cross)
    documents = ["a few words of a document"] * 20
    tokens = reranker.rerank("q", documents).tokens
    before = reranker.stats().rows
    with pytest.raises(crossrank.TokenBudgetError, match=f"{tokens} tokens.*budget \\({tokens - 1}\\)"):
        reranker.rerank("q", documents, token_budget=tokens - 1)
    assert reranker.stats().rows == before
    assert reranker.rerank("q", documents, token_budget=tokens).tokens == tokens
    embedder = crossrank.Embedder(bi_fp32)
    used = embedder.embed_with_usage(documents).tokens
    with pytest.raises(crossrank.TokenBudgetError):
        embedder.embed_with_usage(documents, token_budget=used - 1)
