"""Reranker: scores (query, document) pairs with an exported cross-encoder.

The hot path is split in three stages (as in infinity): ``_encode_pre`` tokenizes and assembles
rows, ``_encode_core`` runs them through the model's executor (``crossrank.model.Model``),
``_encode_post`` applies the activation and restores input order (in chunk mode: the best window
per document). A call tokenizes its texts once; the result says how many tokens ran
(``Ranking.tokens``), so a server reports usage without tokenizing again.

``rerank(..., deadline_ms=N)`` runs the same path with two differences: the rows run in the
caller's (first-stage) order instead of sorted by length, and a Deadline stops it before a batch
that would overrun. Settings tuned by ``crossrank tune`` (``runtime.json``) are used by default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, check_bool, check_choice, check_deadline_ms,
                              check_int, check_queries, check_query, check_text, check_texts, check_top_n)
from crossrank.model import Model, session_options
from crossrank.runner import Deadline
from crossrank.scheduler import run_async
from crossrank.settings import SessionOptions
from crossrank.tokenize import PairTokenizer, Rows

LONG_DOCUMENT_MODES = ("truncate", "chunk")
CHUNK_DOCUMENTS = 4096  # documents tokenized per step: memory stays bounded for huge requests


class RankedDocument(NamedTuple):
    """One reranked document: its position in the caller's list, its score, its text."""

    index: int              # position of the document in the caller's list
    score: float
    document: str | None    # None when return_documents=False


class Ranking(list):
    """What ``rerank`` returns: a list of RankedDocument, best first, plus ``scored``, the number
    of documents that were scored, and ``tokens``, the real tokens (special tokens included) of
    the pair rows the call ran or, under a deadline, submitted. Below a deadline, the documents
    left unscored follow the scored ones in the caller's order, with score nan."""

    def __init__(self, ranked=(), scored: int = 0, tokens: int = 0):
        super().__init__(ranked)
        self.scored = scored
        self.tokens = tokens


Ranked = RankedDocument   # the earlier names, kept as aliases (docs/api.md)
RankedList = Ranking


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


ACTIVATIONS = {"sigmoid": sigmoid, "identity": lambda x: x}


def _group_pairs(pairs) -> tuple[list[str], np.ndarray, list[str]]:
    """(distinct queries, query index of each pair, documents) of checked (query, document) pairs."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise ArgumentTypeError(f"pairs must be a list of (query, document) tuples, got {type(pairs).__name__}")
    query_index: dict[str, int] = {}
    query_of_doc, documents = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ArgumentTypeError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.80}")
        query = check_query(pair[0], f"pairs[{i}][0]")
        query_of_doc.append(query_index.setdefault(query, len(query_index)))
        documents.append(check_text(pair[1], f"pairs[{i}][1]"))
    return list(query_index), np.asarray(query_of_doc, dtype=np.int64), documents


class _Cuts(NamedTuple):
    """How a call cuts its documents: at ``max_tokens`` tokens, then into windows (None: truncate;
    else overlapping by ``overlap`` tokens, at most ``max_windows``)."""

    max_tokens: int | None = None
    overlap: int | None = None
    max_windows: int | None = None


class Reranker(Model):
    """A cross-encoder artifact on ONNX Runtime.

    path: artifact folder from ``crossrank export --kind cross``. device: "cpu" or "cuda".
    threads: intra-op threads (default: physical cores). max_length: token window, at most the
    manifest's. batch_tokens: token budget per model call (rows x padded length).
    long_documents: "truncate" (default) keeps a document's first window; "chunk" scores
    overlapping windows (``chunk_overlap`` tokens, default min(64, a quarter of the
    window)) and keeps the best. io_binding: bind inputs on the device (default: on for CUDA).
    memory_arena: ONNX Runtime's CPU arena (default off). options: a ``SessionOptions`` with
    these and the other session options (graph optimisation, spinning, profiling); an option given
    both as a keyword and in ``options`` must agree. shared: run every call through one queue
    whose worker threads merge concurrent callers' pairs into shared batches
    (``crossrank.scheduler``), with at most ``max_queue_tokens`` tokens queued (beyond:
    OverloadedError) and ``workers`` threads running its batches (default 1). The async variants
    (``arerank``, ``ascore``, ``arerank_many``) work either way and never run the model on the
    event loop.

    Options left unset come from ``runtime.json`` in the artifact folder when it has a section for
    ``device`` (written by ``crossrank tune``), else the defaults (crossrank.settings);
    ``options.origin`` says which. ``clock`` (attribute, default ``time.perf_counter``) times
    deadlines; tests replace it.
    """

    kind = "cross"
    min_length = 8

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None,
                 long_documents: str = "truncate", chunk_overlap: int | None = None, io_binding: bool | None = None,
                 memory_arena: bool | None = None, shared: bool = False, max_queue_tokens: int | None = None,
                 workers: int = 1, *, options: SessionOptions | None = None):
        options = session_options(options, threads=threads, batch_tokens=batch_tokens, io_binding=io_binding,
                                  memory_arena=memory_arena)
        check_choice(long_documents, "long_documents", LONG_DOCUMENT_MODES)
        super().__init__(path, device, max_length, options, shared, max_queue_tokens, workers)
        most = self.tokenizer.max_query_tokens  # windows then still advance by at least half
        if chunk_overlap is None:
            chunk_overlap = min(64, most // 2)
        check_int(chunk_overlap, f"chunk_overlap (for max_length {self.max_length})", 0, most - 1)
        self.long_documents = long_documents
        self.chunk_overlap = chunk_overlap
        self.activation = ACTIVATIONS[self.artifact.manifest["activation"]]
        self.clock: Callable[[], float] = time.perf_counter
        self._seconds_per_token: float | None = None  # measured by the last deadline call

    def _load_tokenizer(self) -> PairTokenizer:
        return PairTokenizer(self.artifact.tokenizer_path, self.max_length)

    def describe(self) -> dict:
        """``Model.describe()`` plus ``long_documents`` and ``chunk_overlap``."""
        return {**super().describe(), "long_documents": self.long_documents, "chunk_overlap": self.chunk_overlap}

    def _cuts(self, max_tokens_per_doc, max_chunks_per_doc) -> _Cuts:
        max_tokens = check_int(max_tokens_per_doc, "max_tokens_per_doc", 1, allow_none=True)
        max_windows = check_int(max_chunks_per_doc, "max_chunks_per_doc", 1, allow_none=True)
        if max_windows is None and self.long_documents == "truncate":
            return _Cuts(max_tokens)
        return _Cuts(max_tokens, self.chunk_overlap, max_windows)

    # -- the three stages -------------------------------------------------------------------
    def _encode_pre(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str],
                    cuts: _Cuts = _Cuts()) -> Rows:
        query_ids = self.tokenizer.encode_texts(queries)
        doc_ids = self.tokenizer.encode_texts(documents) if documents else []
        if cuts.max_tokens is not None:
            doc_ids = [ids[: cuts.max_tokens] for ids in doc_ids]
        return self.tokenizer.pair_rows(query_ids, query_of_doc, doc_ids, chunk_overlap=cuts.overlap,
                                        max_windows=cuts.max_windows)

    def _encode_core(self, rows: Rows, deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._run(rows, deadline)

    def _encode_post(self, rows: Rows, logits: np.ndarray, done: np.ndarray, n_documents: int,
                     raw: bool) -> tuple[np.ndarray, int]:
        """Scores per document and how many leading documents were scored whole."""
        best = np.full(n_documents, -np.inf, dtype=np.float32)
        np.maximum.at(best, rows.owner, logits.astype(np.float32))  # chunk mode: best window wins
        whole = np.ones(n_documents, dtype=bool)
        np.logical_and.at(whole, rows.owner, done)  # chunk mode: every window of a document ran
        scored = n_documents if whole.all() else int(np.argmin(whole))
        return (best if raw else self.activation(best)), scored

    def _scores(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str], raw: bool,
                deadline: Deadline | None = None, cuts: _Cuts = _Cuts()) -> tuple[np.ndarray, int, np.ndarray]:
        """Scores in input order, how many leading documents were scored (all, without a
        deadline; the rest are nan), and the real tokens of each document's rows."""
        scores = np.full(len(documents), np.nan, dtype=np.float32)
        tokens = np.zeros(len(documents), dtype=np.int64)
        for start in range(0, len(documents), CHUNK_DOCUMENTS):
            part = slice(start, start + CHUNK_DOCUMENTS)
            rows = self._encode_pre(queries, query_of_doc[part], documents[part], cuts)
            n = len(documents[part])
            tokens[part] = np.bincount(rows.owner, weights=rows.lengths, minlength=n).astype(np.int64)
            logits, done = self._encode_core(rows, deadline)
            part_scores, scored = self._encode_post(rows, logits, done, n, raw)
            scores[start: start + scored] = part_scores[:scored]
            if scored < n:
                return scores, start + scored, tokens
        return scores, len(documents), tokens

    # -- public API -------------------------------------------------------------------------
    def token_lengths(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Real tokens (special tokens included) of each row ``score(pairs)`` would run: one per
        pair, truncated to the window (in chunk mode: one per window)."""
        queries, query_of_doc, documents = _group_pairs(pairs)
        return self._encode_pre(queries, query_of_doc, documents, self._cuts(None, None)).lengths

    def score(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False) -> np.ndarray:
        """Scores of (query, document) pairs in input order, float32."""
        queries, query_of_doc, documents = _group_pairs(pairs)
        check_bool(raw_scores, "raw_scores")
        return self._scores(queries, query_of_doc, documents, raw_scores, cuts=self._cuts(None, None))[0]

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = True, raw_scores: bool = False,
               deadline_ms: float | None = None, *, max_tokens_per_doc: int | None = None,
               max_chunks_per_doc: int | None = None) -> Ranking:
        """Documents ranked best first (ties keep input order), at most ``top_n``.

        deadline_ms: time allowed for this call. Candidates are then scored in the given
        (first-stage) order, batch by batch, stopping before a batch that would end past the
        deadline; the unscored ones follow the scored ones in their given order with score nan.
        The result's ``scored`` says how many documents were scored. A batch's time is estimated
        from the time per token measured so far (before the first batch: this Reranker's previous
        deadline call), so a Reranker's very first deadline call may overrun by one batch.

        max_tokens_per_doc: keep each document's first that many tokens (then the window cuts it
        as usual). max_chunks_per_doc: score each document by the best of its first that many
        overlapping windows (``chunk_overlap``; 1 = its first window, as "truncate"), whatever
        ``long_documents`` says. The result's ``tokens`` counts the real tokens of its pair rows.
        """
        started = self.clock()
        deadline_ms = check_deadline_ms(deadline_ms)
        if deadline_ms is None:
            return self.rerank_many([query], [documents], top_n, return_documents, raw_scores,
                                    max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc)[0]
        check_top_n(top_n)
        check_bool(return_documents, "return_documents")
        check_bool(raw_scores, "raw_scores")
        cuts = self._cuts(max_tokens_per_doc, max_chunks_per_doc)
        query = check_query(query)
        documents = check_texts(documents)
        deadline = Deadline(started + deadline_ms / 1e3, self.clock, self._seconds_per_token)
        scores, scored, tokens = self._scores([query], np.zeros(len(documents), dtype=np.int64), documents,
                                              raw_scores, deadline, cuts)
        if deadline.spent_tokens:
            self._seconds_per_token = deadline.seconds_per_token
        order = np.argsort(-scores[:scored], kind="stable").tolist() + list(range(scored, len(documents)))
        ranked = [RankedDocument(i, float(scores[i]), documents[i] if return_documents else None)
                  for i in order[:top_n]]
        return Ranking(ranked, scored=scored, tokens=int(tokens.sum()))

    def rerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                    top_n: int | None = None, return_documents: bool = True,
                    raw_scores: bool = False, *, max_tokens_per_doc: int | None = None,
                    max_chunks_per_doc: int | None = None) -> list[Ranking]:
        """``rerank`` for several queries at once; their pairs share batches."""
        check_top_n(top_n)
        check_bool(return_documents, "return_documents")
        check_bool(raw_scores, "raw_scores")
        cuts = self._cuts(max_tokens_per_doc, max_chunks_per_doc)
        one = not isinstance(queries, (str, bytes)) and isinstance(queries, Sequence) and len(queries) == 1
        queries = [check_query(queries[0])] if one else check_queries(queries)
        if isinstance(documents_per_query, (str, bytes)) or not isinstance(documents_per_query, Sequence):
            raise ArgumentTypeError(f"documents_per_query must be a list of lists of str, got "
                                    f"{type(documents_per_query).__name__}")
        if len(queries) != len(documents_per_query):
            raise InvalidArgumentError(f"{len(queries)} queries but {len(documents_per_query)} document lists")
        doc_lists = [check_texts(docs, "documents" if one else f"documents_per_query[{i}]")
                     for i, docs in enumerate(documents_per_query)]
        query_of_doc = np.repeat(np.arange(len(queries)), [len(d) for d in doc_lists])
        flat = [doc for docs in doc_lists for doc in docs]
        scores, _, tokens = self._scores(queries, query_of_doc, flat, raw_scores, cuts=cuts)
        results, start = [], 0
        for docs in doc_lists:
            part = slice(start, start + len(docs))
            start += len(docs)
            order = np.argsort(-scores[part], kind="stable")[: top_n]
            results.append(Ranking([RankedDocument(int(i), float(scores[part][i]),
                                                   docs[i] if return_documents else None) for i in order],
                                   scored=len(docs), tokens=int(tokens[part].sum())))
        return results

    async def ascore(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False) -> np.ndarray:
        """``score`` for asyncio callers (on a thread of its own; cancelling drops queued pairs)."""
        return await run_async(self.score, pairs, raw_scores)

    async def arerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
                      return_documents: bool = True, raw_scores: bool = False,
                      deadline_ms: float | None = None, *, max_tokens_per_doc: int | None = None,
                      max_chunks_per_doc: int | None = None) -> Ranking:
        """``rerank`` for asyncio callers (on a thread of its own; cancelling drops queued pairs)."""
        return await run_async(self.rerank, query, documents, top_n, return_documents, raw_scores, deadline_ms,
                               max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc)

    async def arerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                           top_n: int | None = None, return_documents: bool = True,
                           raw_scores: bool = False, *, max_tokens_per_doc: int | None = None,
                           max_chunks_per_doc: int | None = None) -> list[Ranking]:
        """``rerank_many`` for asyncio callers."""
        return await run_async(self.rerank_many, queries, documents_per_query, top_n, return_documents, raw_scores,
                               max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc)


__all__ = ["LONG_DOCUMENT_MODES", "Ranked", "RankedDocument", "RankedList", "Ranking", "Reranker", "sigmoid"]
