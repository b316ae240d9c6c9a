"""Reranker: scores (query, document) pairs with an exported cross-encoder.

The hot path is split in three stages (as in infinity): ``_encode_pre`` tokenizes and assembles
rows, ``_encode_core`` runs length-sorted token-budget batches, ``_encode_post`` applies the
activation and restores input order.

``rerank(..., deadline_ms=N)`` instead scores the candidates in the caller's (first-stage) order,
batch by batch, and stops before a batch that would overrun the deadline: see ``_rerank_within``.
Settings tuned by ``crossrank tune`` (``runtime.json`` in the artifact folder) are used by default.
"""

from __future__ import annotations

import math
import numbers
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from crossrank.artifact import load_artifact
from crossrank.runner import BatchRunner
from crossrank.tokenize import PairTokenizer, Rows
from crossrank.tuning import runtime_settings

LONG_DOCUMENT_MODES = ("truncate", "chunk")
CHUNK_DOCUMENTS = 4096  # documents tokenized per step: memory stays bounded for huge requests


class Ranked(NamedTuple):
    index: int              # position of the document in the caller's list
    score: float
    document: str | None    # None when return_documents=False


class RankedList(list):
    """What ``rerank`` returns: a list of Ranked, best first, plus ``scored``, the number of
    documents that were scored. Below a deadline, the documents left unscored follow the scored
    ones in the caller's order, with score nan."""

    def __init__(self, ranked=(), scored: int = 0):
        super().__init__(ranked)
        self.scored = scored


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


ACTIVATIONS = {"sigmoid": sigmoid, None: lambda x: x, "identity": lambda x: x}


def check_query(query, name: str = "query") -> str:
    if not isinstance(query, str):
        raise TypeError(f"{name} must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError(f"{name} is empty; give the text to rank documents against")
    return query


def check_documents(documents, name: str = "documents") -> list[str]:
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(doc).__name__}")
    return list(documents)


def check_top_n(top_n) -> None:
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n <= 0):
        raise ValueError(f"top_n must be a positive int or None, got {top_n!r}")


def check_deadline(deadline_ms) -> float:
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, numbers.Real) or not deadline_ms >= 0:
        raise ValueError(f"deadline_ms must be a number >= 0 (milliseconds) or None, got {deadline_ms!r}")
    return float(deadline_ms)


def batches_in_order(lengths: np.ndarray, batch_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Consecutive rows in input order, each batch within the token budget (rows x longest row)."""
    batches, start, width = [], 0, 0
    for i, length in enumerate(np.asarray(lengths).tolist()):
        wider = max(width, length)
        if i > start and (wider * (i - start + 1) > batch_tokens or i - start >= max_rows):
            batches.append(np.arange(start, i))
            start, wider = i, length
        width = wider
    if start < len(lengths):
        batches.append(np.arange(start, len(lengths)))
    return batches


class _DeadlineGate:
    """``should_continue`` for BatchRunner.run: lets the next batch run only if, at the time per
    computed token measured so far in this call (before the first batch: the previous call's),
    it ends by the deadline. With no measurement yet, a batch runs if time is left."""

    def __init__(self, clock: Callable[[], float], deadline_at: float, costs: list[int],
                 seconds_per_token: float | None):
        self.clock, self.deadline_at, self.costs = clock, deadline_at, costs
        self.seconds_per_token = seconds_per_token
        self.ran = 0
        self.started: float | None = None  # clock when the running batch started
        self.spent_seconds, self.spent_tokens = 0.0, 0

    def _account(self, now: float) -> None:
        if self.started is not None:
            self.spent_seconds += now - self.started
            self.spent_tokens += self.costs[self.ran - 1]
            self.seconds_per_token = self.spent_seconds / self.spent_tokens
            self.started = None

    def __call__(self, rows: int) -> bool:
        now = self.clock()
        self._account(now)
        estimate = 0.0 if self.seconds_per_token is None else self.seconds_per_token * self.costs[self.ran]
        if now >= self.deadline_at or now + estimate > self.deadline_at:
            return False
        self.started = now
        self.ran += 1
        return True

    def finish(self) -> None:
        self._account(self.clock())


class Reranker:
    """A cross-encoder artifact on ONNX Runtime.

    path: artifact folder from ``crossrank export --kind cross``. device: "cpu" or "cuda".
    threads: intra-op threads (default: physical cores). max_length: token window, at most the
    manifest's. batch_tokens: token budget per model call (rows x padded length).
    long_documents: "truncate" (default) keeps a document's first window; "chunk" scores
    overlapping windows (``chunk_overlap`` tokens, default min(64, a quarter of the
    window)) and keeps the best.

    threads, batch_tokens and io_binding left as None come from ``runtime.json`` in the artifact
    folder when it has a section for ``device`` (written by ``crossrank tune``), else the
    defaults. ``clock`` (attribute, default ``time.perf_counter``) times deadlines; tests replace it.
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None,
                 long_documents: str = "truncate", chunk_overlap: int | None = None, io_binding: bool | None = None,
                 memory_arena: bool = False):
        self.artifact = load_artifact(path, expect_kind="cross")
        limit = self.artifact.max_length
        if max_length is not None and not 8 <= max_length <= limit:
            raise ValueError(f"max_length {max_length} must be between 8 and the artifact's {limit}")
        if long_documents not in LONG_DOCUMENT_MODES:
            raise ValueError(f"long_documents {long_documents!r} is not one of {LONG_DOCUMENT_MODES}")
        self.max_length = max_length or limit
        self.tokenizer = PairTokenizer(self.artifact.tokenizer_path, self.max_length)
        most = self.tokenizer.max_query_tokens  # windows then still advance by at least half
        if chunk_overlap is None:
            chunk_overlap = min(64, most // 2)
        elif not 0 <= chunk_overlap < most:
            raise ValueError(f"chunk_overlap {chunk_overlap} must be in [0, {most}) for max_length {self.max_length}")
        self.long_documents = long_documents
        self.chunk_overlap = chunk_overlap
        self.activation = ACTIVATIONS[self.artifact.manifest.get("activation")]
        tuned = runtime_settings(self.artifact.path, device)  # {} without runtime.json
        self.runner = BatchRunner(self.artifact.model_path, device=device,
                                  threads=tuned.get("threads") if threads is None else threads,
                                  batch_tokens=tuned.get("batch_tokens") if batch_tokens is None else batch_tokens,
                                  io_binding=tuned.get("io_binding") if io_binding is None else io_binding,
                                  memory_arena=memory_arena)
        self.device = device
        self.clock: Callable[[], float] = time.perf_counter
        self._seconds_per_token: float | None = None  # last deadline call's measured rate

    # -- the three stages -------------------------------------------------------------------
    def _encode_pre(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str]) -> Rows:
        query_ids = self.tokenizer.encode_texts(queries)
        doc_ids = self.tokenizer.encode_texts(documents) if documents else []
        overlap = self.chunk_overlap if self.long_documents == "chunk" else None
        return self.tokenizer.pair_rows(query_ids, query_of_doc, doc_ids, chunk_overlap=overlap)

    def _encode_core(self, rows: Rows) -> np.ndarray:
        logits, _ = self.runner.run(rows, self.tokenizer.pad_id)
        return logits

    def _encode_post(self, rows: Rows, logits: np.ndarray, n_documents: int, raw: bool) -> np.ndarray:
        best = np.full(n_documents, -np.inf, dtype=np.float32)
        np.maximum.at(best, rows.owner, logits.astype(np.float32))  # chunk mode: best window wins
        return best if raw else self.activation(best)

    def _scores(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str], raw: bool) -> np.ndarray:
        if not documents:
            return np.zeros(0, dtype=np.float32)
        scores = np.empty(len(documents), dtype=np.float32)
        for start in range(0, len(documents), CHUNK_DOCUMENTS):
            part = slice(start, start + CHUNK_DOCUMENTS)
            rows = self._encode_pre(queries, query_of_doc[part], documents[part])
            scores[part] = self._encode_post(rows, self._encode_core(rows), len(documents[part]), raw)
        return scores

    # -- public API -------------------------------------------------------------------------
    def score(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False) -> np.ndarray:
        """Scores of (query, document) pairs in input order, float32."""
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise TypeError(f"pairs must be a list of (query, document) tuples, got {type(pairs).__name__}")
        query_index: dict[str, int] = {}
        query_of_doc, documents = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.80}")
            query = check_query(pair[0], f"pairs[{i}][0]")
            if not isinstance(pair[1], str):
                raise TypeError(f"pairs[{i}][1] must be a str, got {type(pair[1]).__name__}")
            query_of_doc.append(query_index.setdefault(query, len(query_index)))
            documents.append(pair[1])
        return self._scores(list(query_index), np.asarray(query_of_doc, dtype=np.int64), documents, raw_scores)

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = True, raw_scores: bool = False,
               deadline_ms: float | None = None) -> RankedList:
        """Documents ranked best first (ties keep input order), at most ``top_n``.

        deadline_ms: time allowed for this call. Candidates are then scored in the given
        (first-stage) order, batch by batch, stopping before a batch that would end past the
        deadline; the unscored ones follow the scored ones in their given order with score nan.
        The result's ``scored`` says how many documents were scored. A batch's time is estimated
        from the time per token measured so far (before the first batch: this Reranker's previous
        deadline call), so a Reranker's very first deadline call may overrun by one batch.
        """
        if deadline_ms is not None:
            return self._rerank_within(query, documents, top_n, return_documents, raw_scores, deadline_ms)
        ranked = self.rerank_many([query], [documents], top_n, return_documents, raw_scores)[0]
        return RankedList(ranked, scored=len(documents))

    def _rerank_within(self, query, documents, top_n, return_documents, raw_scores, deadline_ms) -> RankedList:
        started = self.clock()
        deadline_at = started + check_deadline(deadline_ms) / 1e3
        check_top_n(top_n)
        query = check_query(query)
        documents = check_documents(documents)
        scores, scored = np.zeros(0, dtype=np.float32), 0
        if documents:
            rows = self._encode_pre([query], np.zeros(len(documents), dtype=np.int64), documents)
            lengths = rows.lengths
            batches = batches_in_order(lengths, self.runner.batch_tokens, self.runner.max_rows)
            gate = _DeadlineGate(self.clock, deadline_at, [len(b) * int(lengths[b].max()) for b in batches],
                                 self._seconds_per_token)
            logits, done = self.runner.run(rows, self.tokenizer.pad_id, should_continue=gate, order=batches)
            gate.finish()
            if gate.spent_tokens:
                self._seconds_per_token = gate.seconds_per_token
            whole = np.ones(len(documents), dtype=bool)
            np.logical_and.at(whole, rows.owner, done)  # chunk mode: every window of a document ran
            scored = len(documents) if whole.all() else int(np.argmin(whole))
            scores = self._encode_post(rows, logits, len(documents), raw_scores)[:scored]
        order = np.argsort(-scores, kind="stable").tolist() + list(range(scored, len(documents)))
        ranked = [Ranked(i, float(scores[i]) if i < scored else math.nan,
                         documents[i] if return_documents else None) for i in order[:top_n]]
        return RankedList(ranked, scored=scored)

    def rerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                    top_n: int | None = None, return_documents: bool = True,
                    raw_scores: bool = False) -> list[list[Ranked]]:
        """``rerank`` for several queries at once; their pairs share batches."""
        check_top_n(top_n)
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError(f"queries must be a list of str, got {type(queries).__name__}")
        if len(queries) != len(documents_per_query):
            raise ValueError(f"{len(queries)} queries but {len(documents_per_query)} document lists")
        name = "documents" if len(queries) == 1 else "documents_per_query[{}]"
        doc_lists = [check_documents(docs, name.format(i)) for i, docs in enumerate(documents_per_query)]
        queries = [check_query(q, "query" if len(queries) == 1 else f"queries[{i}]") for i, q in enumerate(queries)]
        query_of_doc = np.repeat(np.arange(len(queries)), [len(d) for d in doc_lists])
        flat = [doc for docs in doc_lists for doc in docs]
        scores = self._scores(queries, query_of_doc, flat, raw_scores)
        results, start = [], 0
        for docs in doc_lists:
            part = scores[start: start + len(docs)]
            start += len(docs)
            order = np.argsort(-part, kind="stable")[: top_n]
            results.append([Ranked(int(i), float(part[i]), docs[i] if return_documents else None) for i in order])
        return results

    @property
    def padding_fraction(self) -> float:
        """Share of computed tokens that were padding, over this Reranker's life."""
        return self.runner.stats.padding_fraction
