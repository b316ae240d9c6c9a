"""Evidence and truncation counts (issue 23) on constructed documents with a known relevant window,
scored by the shipped 6-layer starter (int8, a 128-token window so that documents have several).

The filler and the relevant passage are made of words that are one token each, so a window's
characters tokenize back to exactly its tokens: the offsets are checked by scoring the text they
cut, which must give the window's own score.
"""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

import crossrank
from crossrank.settings import CUT_CHARS_PER_TOKEN

QUERY = "knowledge graph link prediction"
PASSAGE = "knowledge graph models represent entities and relations as vectors in a space for link prediction"
FILLER = "the farmer baked fresh bread in the morning and sold it at the market near the river"
WINDOW = 128


def document(before: int, after: int) -> tuple[str, int]:
    """Filler sentences, the passage, more filler; and where the passage starts (characters)."""
    head = " ".join([FILLER + "."] * before)
    text = f"{head} {PASSAGE}. " + " ".join([FILLER + "."] * after)
    return text, len(head) + 1


@pytest.fixture(scope="module")
def chunked(starter_int8):
    return crossrank.Reranker(starter_int8, max_length=WINDOW, long_documents="chunk")


@pytest.fixture(scope="module")
def truncating(starter_int8):
    return crossrank.Reranker(starter_int8, max_length=WINDOW)


def tokens(reranker, text: str) -> list[int]:
    return reranker.tokenizer.encode_texts([text])[0].tolist()


def test_one_token_words(chunked):
    for text in (PASSAGE, FILLER, QUERY):
        assert len(tokens(chunked, text)) == len(text.split()), text


def test_the_winning_window_holds_the_relevant_passage_and_its_offsets_cut_its_text(chunked):
    text, at = document(12, 12)
    (ranked,) = chunked.rerank(QUERY, [text], return_evidence=True)
    evidence = ranked.evidence
    assert len(evidence.windows) >= 4 and ranked.dropped_tokens == 0 and not ranked.truncated
    winner = evidence.windows[evidence.window]
    assert (evidence.start, evidence.end) == (winner.start, winner.end)
    assert winner.start <= at and at + len(PASSAGE) <= winner.end  # the passage lies inside the winner
    assert ranked.score == winner.score == max(w.score for w in evidence.windows)
    ids = tokens(chunked, text)
    assert evidence.windows[0].start == 0 and evidence.windows[-1].end == len(text.rstrip())
    alone = chunked.score([(QUERY, text[w.start:w.end]) for w in evidence.windows])
    for w, score in zip(evidence.windows, alone):
        cut = tokens(chunked, text[w.start:w.end])
        start = next(i for i in range(len(ids)) if ids[i:i + len(cut)] == cut)
        assert ids[start:start + len(cut)] == cut  # the text at the offsets is a whole run of the document's tokens
        assert abs(score - w.score) < 1e-5      # and scores what the window scored
    spans = [(w.start, w.end) for w in evidence.windows]
    assert spans == sorted(spans) and all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # in order, overlapping


def test_evidence_scores_are_on_the_results_scale(chunked):
    text, _ = document(6, 6)
    (plain,) = chunked.rerank(QUERY, [text], return_evidence=True)
    (raw,) = chunked.rerank(QUERY, [text], return_evidence=True, raw_scores=True)
    assert raw.evidence.window == plain.evidence.window
    np.testing.assert_allclose([w.score for w in plain.evidence.windows],
                               chunked.activation(np.asarray([w.score for w in raw.evidence.windows])), rtol=0, atol=1e-7)
    assert chunked.rerank(QUERY, [text])[0].evidence is None  # only when asked


def test_truncation_counts(truncating, chunked):
    """Exact for documents read whole (up to CUT_CHARS_PER_TOKEN characters per token the windows
    can hold); for longer ones only the prefix the windows need is read, so their count is a lower
    bound of the tokens no window read, and ``truncated`` still says so."""
    short = FILLER
    medium = " ".join([FILLER] * 9)   # 153 tokens, 773 characters: read whole by a 128-token window
    n = len(tokens(truncating, medium))
    assert n == 153 and len(medium) <= (WINDOW - 3) * CUT_CHARS_PER_TOKEN
    budget = WINDOW - 3 - len(tokens(truncating, QUERY))  # [CLS] query [SEP] document [SEP]
    ranking = truncating.rerank(QUERY, [short, medium])
    by_index = {r.index: r for r in ranking}
    assert by_index[0].dropped_tokens == 0 and not by_index[0].truncated
    assert by_index[1].dropped_tokens == n - budget and by_index[1].truncated
    assert (ranking.truncated, ranking.dropped_tokens) == (1, n - budget)
    seven = " ".join(FILLER.split()[:7])  # 35 characters: read whole for 5 tokens (40 characters)
    assert truncating.rerank(QUERY, [seven], max_tokens_per_doc=5)[0].dropped_tokens == 2
    cut = truncating.rerank(QUERY, [medium], max_tokens_per_doc=50)[0]  # 50 tokens need 400 characters
    assert cut.truncated and 0 < cut.dropped_tokens <= n - 50
    overlap = chunked.chunk_overlap
    longer = " ".join([FILLER] * 14)  # 238 tokens: more than two windows hold, read whole for two
    two = chunked.rerank(QUERY, [longer], max_chunks_per_doc=2, return_evidence=True)[0]
    assert len(two.evidence.windows) == 2
    assert two.dropped_tokens == 238 - ((budget - overlap) + budget)  # the second window ends there
    long_text, _ = document(12, 12)   # 448 tokens: read only as far as the window needs
    (long_ranked,) = truncating.rerank(QUERY, [long_text])
    assert long_ranked.truncated and 0 < long_ranked.dropped_tokens <= len(tokens(truncating, long_text)) - budget
    top = chunked.rerank(QUERY, [short, long_text, long_text], top_n=1)
    assert len(top) == 1 and top.truncated == 0 and top.dropped_tokens == 0  # chunked whole: nothing dropped


def test_embedder_truncation_counts(bi_fp32):
    embedder = crossrank.Embedder(bi_fp32, max_length=32)
    long_text = " ".join([FILLER] * 2)  # 34 one-token words, 171 characters; the window holds [CLS] + 30 + [SEP]
    whole = Tokenizer.from_file(str(bi_fp32 / "tokenizer.json"))
    whole.no_truncation()
    assert len(whole.encode(long_text, add_special_tokens=False).ids) == 34
    result = embedder.embed_with_usage([FILLER[:20], long_text, long_text])
    assert (result.truncated, result.dropped_tokens) == (2, 2 * (34 - 30))
    assert embedder.embed_with_usage([FILLER[:20]]).truncated == 0
    longer = embedder.embed_with_usage([" ".join([FILLER] * 6)])  # 102 tokens: read as far as the window needs
    assert longer.truncated == 1 and 0 < longer.dropped_tokens <= 102 - 30

