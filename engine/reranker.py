"""Reranker: scores (query, document) pairs with an exported cross-encoder.

The hot path is split in three stages (as in infinity): ``_encode_pre`` tokenizes and assembles
rows, ``_encode_core`` runs them through the model's executor (``crossrank.model.Model``),
``_encode_post`` restores input order (in chunk mode: the best window per document); the scores
then go through the calibration or activation (``_output``). A call tokenizes its texts once; the result says how many tokens ran
(``Ranking.tokens``), so a server reports usage without tokenizing again.

``rerank(..., deadline_ms=N)`` runs the same path with two differences: the rows run in the
caller's (first-stage) order instead of sorted by length, and a Deadline stops it before a batch
that would overrun. Settings tuned by ``crossrank tune`` (``runtime.json``) are used by default.

Scores: the model's raw score (a logit) through the artifact's ``calibration.json`` when it has
one (P(relevant), ``crossrank.calibration``), else through the manifest's activation;
``raw_scores=True`` gives the logits. Rankings are made on the raw scores, so a calibration never
changes an order. Each result says how many of its document's tokens no window read
(``dropped_tokens``) and, with ``return_evidence=True``, which window won and every window's score
(``Evidence``, character offsets into the document).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from crossrank.calibration import Calibration, load_calibration
from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, check_bool, check_choice, check_deadline_ms,
                              check_int, check_queries, check_query, check_text, check_texts, check_token_budget,
                              check_top_n)
from crossrank.model import Model, session_options
from crossrank.runner import CoreBudget, Deadline
from crossrank.scheduler import run_async
from crossrank.settings import SessionOptions
from crossrank.tokenize import PairTokenizer, Rows, pair_tokenizer

LONG_DOCUMENT_MODES = ("truncate", "chunk")
CHUNK_DOCUMENTS = 4096  # documents tokenized per step: memory stays bounded for huge requests


class Window(NamedTuple):
    """One window of a document as the model read it: ``document[start:end]`` (character offsets)
    and its score (on the result's scale)."""

    start: int
    end: int
    score: float


class Evidence(NamedTuple):
    """Where a document's score came from: its windows in document order (one unless the document
    was chunked) and the winner, whose score is the document's; ``document[start:end]`` is the
    winning window's text."""

    window: int                  # index of the winning window in ``windows``
    start: int
    end: int
    windows: tuple[Window, ...]


class RankedDocument(NamedTuple):
    """One reranked document: its position in the caller's list, its score, its text; how many of
    its tokens no window read (``truncated`` when any), and its ``Evidence`` when asked for."""

    index: int              # position of the document in the caller's list
    score: float
    document: str | None    # None when return_documents=False
    dropped_tokens: int = 0
    evidence: Evidence | None = None   # with return_evidence=True (None for a document left unscored)

    @property
    def truncated(self) -> bool:
        return self.dropped_tokens > 0


class Ranking(list):
    """What ``rerank`` returns: a list of RankedDocument, best first, plus ``scored``, the number
    of documents that were scored, ``tokens``, the real tokens (special tokens included) of the
    pair rows the call ran or, under a deadline, submitted, and over all its documents (top_n or
    not) ``truncated`` (how many had tokens no window read) and ``dropped_tokens`` (how many such
    tokens). Below a deadline, the documents left unscored follow the scored ones in the caller's
    order, with score nan."""

    def __init__(self, ranked=(), scored: int = 0, tokens: int = 0, truncated: int = 0, dropped_tokens: int = 0):
        super().__init__(ranked)
        self.scored = scored
        self.tokens = tokens
        self.truncated = truncated
        self.dropped_tokens = dropped_tokens


Ranked = RankedDocument   # the earlier names, kept as aliases (docs/api.md)
RankedList = Ranking


def best_first(scores) -> np.ndarray:
    """Positions of ``scores`` from the highest to the lowest, ties in input order: the one ranking
    rule (``rerank``, cascades, ``crossrank select``)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


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


class _Scored(NamedTuple):
    """A call's documents as the model scored them (input order)."""

    logits: np.ndarray          # the best window's raw score (nan where not scored)
    scored: int                 # leading documents scored (all, without a deadline)
    tokens: np.ndarray          # real tokens of each document's rows
    dropped: np.ndarray         # tokens of each document that no window read
    windows: list | None        # with evidence: per scored document, (character spans [w, 2], window logits [w])

    def ranking(self, ranked, scored: int | None = None, part: slice = slice(None)) -> "Ranking":
        dropped = self.dropped[part]
        return Ranking(ranked, scored=self.scored if scored is None else scored, tokens=int(self.tokens[part].sum()),
                       truncated=int((dropped > 0).sum()), dropped_tokens=int(dropped.sum()))


class Reranker(Model):
    """A cross-encoder artifact on ONNX Runtime or OpenVINO.

    path: artifact folder from ``crossrank export --kind cross``. device: "cpu" or "cuda".
    threads: intra-op threads (default: physical cores). max_length: token window, at most the
    manifest's. batch_tokens: token budget per model call (rows x padded length).
    long_documents: "truncate" (default) keeps a document's first window; "chunk" scores
    overlapping windows (``chunk_overlap`` tokens, default min(64, a quarter of the
    window)) and keeps the best. io_binding: bind inputs on the device (default: on for CUDA).
    memory_arena: ONNX Runtime's CPU arena (default off). backend: "onnxruntime" or "openvino"
    (CPU; extra ``crossrank[openvino]``). precision: the artifact's own, or "bf16" (an fp32
    artifact on OpenVINO, on a CPU with AVX-512 BF16 or AMX, with a passing certificate from
    ``crossrank certify``); both default by crossrank.isa's rule (``describe()["runtime"]`` says
    why). allow_low_fidelity: run a precision without a passing certificate instead of refusing
    it (crossrank.certificate). options: a ``SessionOptions`` with
    these and the other session options (graph optimisation, spinning, profiling); an option given
    both as a keyword and in ``options`` must agree. shared: run every call through one queue
    whose worker threads merge concurrent callers' pairs into shared batches
    (``crossrank.scheduler``), with at most ``max_queue_tokens`` tokens queued (beyond:
    OverloadedError) and ``workers`` threads running its batches (default 1). The async variants
    (``arerank``, ``ascore``, ``arerank_many``) work either way and never run the model on the
    event loop. core_budget: a ``CoreBudget`` this model shares with others (model calls take
    turns on the cores). calibration: True (default) = the folder's ``calibration.json`` when it
    has one, False = none, or a calibration file's path; a file fitted for another artifact is
    refused (``crossrank.calibration``); ``calibration`` (attribute) is the one in use or None.

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
                 workers: int = 1, *, options: SessionOptions | None = None, core_budget: CoreBudget | None = None,
                 calibration: bool | str | Path = True, backend: str | None = None, precision: str | None = None,
                 allow_low_fidelity: bool | None = None):
        options = session_options(options, threads=threads, batch_tokens=batch_tokens, io_binding=io_binding,
                                  memory_arena=memory_arena, backend=backend, precision=precision,
                                  allow_low_fidelity=allow_low_fidelity)
        check_choice(long_documents, "long_documents", LONG_DOCUMENT_MODES)
        super().__init__(path, device, max_length, options, shared, max_queue_tokens, workers, core_budget)
        self.calibration: Calibration | None = load_calibration(self.artifact, calibration)
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
        return pair_tokenizer(self.artifact.tokenizer_path, self.max_length, self.artifact.manifest.get("prompt"))

    @property
    def accepts_instruction(self) -> bool:
        """Whether ``rerank(..., instruction=)`` is taken (an instruct-aware prompt template)."""
        return self.tokenizer.accepts_instruction

    def describe(self) -> dict:
        """``Model.describe()`` plus ``long_documents``, ``chunk_overlap``, ``scores`` ("calibrated",
        or the manifest's activation: "sigmoid" / "identity"), ``calibration`` (its summary, or
        None), ``family`` (the export family) and ``instruction`` (``accepted``, and the prompt's
        ``default`` or None)."""
        manifest = self.artifact.manifest
        return {**super().describe(), "long_documents": self.long_documents, "chunk_overlap": self.chunk_overlap,
                "scores": self.scores,
                "calibration": self.calibration.summary() if self.calibration is not None else None,
                "family": manifest.get("family", "bert"),
                "instruction": {"accepted": self.accepts_instruction,
                                "default": (manifest.get("prompt") or {}).get("default_instruction")}}

    @property
    def scores(self) -> str:
        """What the scores are: "calibrated" (P(relevant)) or the manifest's activation of the logit."""
        return "calibrated" if self.calibration is not None else self.artifact.manifest["activation"]

    def _output(self, logits: np.ndarray, raw: bool) -> np.ndarray:
        """Raw scores on the result's scale: as they are (raw), calibrated, or through the activation."""
        logits = np.asarray(logits, dtype=np.float32)
        if raw:
            return logits
        return self.calibration.apply(logits) if self.calibration is not None else self.activation(logits)

    def _cuts(self, max_tokens_per_doc, max_chunks_per_doc) -> _Cuts:
        max_tokens = check_int(max_tokens_per_doc, "max_tokens_per_doc", 1, allow_none=True)
        max_windows = check_int(max_chunks_per_doc, "max_chunks_per_doc", 1, allow_none=True)
        if max_windows is None and self.long_documents == "truncate":
            return _Cuts(max_tokens)
        return _Cuts(max_tokens, self.chunk_overlap, max_windows)

    # -- the three stages -------------------------------------------------------------------
    def _encode_pre(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str],
                    cuts: _Cuts = _Cuts(), offsets: bool = False,
                    instruction: str | None = None) -> tuple[Rows, np.ndarray, list | None]:
        """The pair rows, each document's tokens as read (all of a short document; of a long one,
        the prefix its windows need, ``encode_prefixes``) and, with ``offsets``, each document's
        token character offsets."""
        query_ids = self.tokenizer.encode_queries(queries, instruction)
        keep = self.tokenizer.document_tokens(cuts.max_tokens, cuts.overlap, cuts.max_windows)
        doc_ids, doc_tokens, doc_offsets = self.tokenizer.encode_documents(documents, keep, offsets)
        rows = self.tokenizer.pair_rows(query_ids, query_of_doc, doc_ids, chunk_overlap=cuts.overlap,
                                        max_windows=cuts.max_windows)
        return rows, doc_tokens, doc_offsets

    def _encode_core(self, rows: Rows, deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._run(rows, deadline)

    @staticmethod
    def _encode_post(rows: Rows, logits: np.ndarray, done: np.ndarray, n_documents: int) -> tuple[np.ndarray, int]:
        """Each document's raw score (in chunk mode: its best window's) and how many leading
        documents were scored whole."""
        best = np.full(n_documents, -np.inf, dtype=np.float32)
        np.maximum.at(best, rows.owner, logits.astype(np.float32))  # chunk mode: best window wins
        whole = np.ones(n_documents, dtype=bool)
        np.logical_and.at(whole, rows.owner, done)  # chunk mode: every window of a document ran
        scored = n_documents if whole.all() else int(np.argmin(whole))
        return best, scored

    @staticmethod
    def _windows(rows: Rows, logits: np.ndarray, offsets: list[np.ndarray], scored: int) -> list:
        """Per scored document: its windows' character spans [w, 2] and raw scores [w] (rows of a
        document are consecutive and in document order)."""
        bounds = np.searchsorted(rows.owner, np.arange(scored + 1))
        out = []
        for doc in range(scored):
            first, last = bounds[doc], bounds[doc + 1]
            chars = np.zeros((last - first, 2), dtype=np.int64)
            for w, (start, end) in enumerate(rows.spans[first:last]):
                if end > start:
                    chars[w] = offsets[doc][start, 0], offsets[doc][end - 1, 1]
            out.append((chars, logits[first:last].astype(np.float32)))
        return out

    def _scores(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str],
                deadline: Deadline | None = None, cuts: _Cuts = _Cuts(), evidence: bool = False,
                token_budget: int | None = None, instruction: str | None = None) -> _Scored:
        """Raw scores in input order and what the call did (``_Scored``); the documents after the
        leading ``scored`` ones (a deadline stopped the call) are nan. With ``token_budget``:
        TokenBudgetError before running rows past it (checked per step of CHUNK_DOCUMENTS
        documents, so what runs never exceeds it)."""
        n = len(documents)
        logits = np.full(n, np.nan, dtype=np.float32)
        tokens, dropped = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        windows = [] if evidence else None
        for start in range(0, n, CHUNK_DOCUMENTS):
            part = slice(start, start + CHUNK_DOCUMENTS)
            rows, doc_tokens, offsets = self._encode_pre(queries, query_of_doc[part], documents[part], cuts, evidence,
                                                         instruction)
            count = len(doc_tokens)
            tokens[part] = np.bincount(rows.owner, weights=rows.lengths, minlength=count).astype(np.int64)
            check_token_budget(int(tokens[: start + count].sum()), token_budget, f"this call's {n} pairs")
            read = np.zeros(count, dtype=np.int64)
            np.maximum.at(read, rows.owner, rows.spans[:, 1])  # windows tile each document from its start
            dropped[part] = doc_tokens - read
            row_logits, done = self._encode_core(rows, deadline)
            best, part_scored = self._encode_post(rows, row_logits, done, count)
            logits[start: start + part_scored] = best[:part_scored]
            if evidence:
                windows += self._windows(rows, row_logits, offsets, part_scored)
            if part_scored < count:  # a deadline stopped the call: later parts are not even tokenized
                return _Scored(logits, start + part_scored, tokens, dropped, windows)
        return _Scored(logits, n, tokens, dropped, windows)

    def _ranked(self, order, scored: _Scored, scores: np.ndarray, documents: Sequence[str], return_documents: bool,
                raw: bool, offset: int = 0) -> list[RankedDocument]:
        """RankedDocuments of the documents at ``order`` (positions in ``documents``, whose first
        is the call's document ``offset``)."""
        out = []
        for i in order:
            i = int(i)
            evidence = None
            if scored.windows is not None and offset + i < len(scored.windows):
                chars, window_logits = scored.windows[offset + i]
                window_scores = self._output(window_logits, raw)
                best = int(np.argmax(window_logits))
                evidence = Evidence(best, int(chars[best, 0]), int(chars[best, 1]),
                                    tuple(Window(int(a), int(b), float(x)) for (a, b), x in zip(chars, window_scores)))
            out.append(RankedDocument(i, float(scores[i]), documents[i] if return_documents else None,
                                      int(scored.dropped[offset + i]), evidence))
        return out

    # -- public API -------------------------------------------------------------------------
    def token_lengths(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> np.ndarray:
        """Real tokens (special tokens included) of each row ``score(pairs)`` would run: one per
        pair, truncated to the window (in chunk mode: one per window)."""
        queries, query_of_doc, documents = _group_pairs(pairs)
        instruction = self.tokenizer.check_instruction(instruction)
        return self._encode_pre(queries, query_of_doc, documents, self._cuts(None, None),
                                instruction=instruction)[0].lengths

    def score(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False,
              instruction: str | None = None) -> np.ndarray:
        """Scores of (query, document) pairs in input order, float32. ``instruction``: see ``rerank``."""
        queries, query_of_doc, documents = _group_pairs(pairs)
        check_bool(raw_scores, "raw_scores")
        instruction = self.tokenizer.check_instruction(instruction)
        return self._output(self._scores(queries, query_of_doc, documents, cuts=self._cuts(None, None),
                                         instruction=instruction).logits, raw_scores)

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = True, raw_scores: bool = False,
               deadline_ms: float | None = None, *, max_tokens_per_doc: int | None = None,
               max_chunks_per_doc: int | None = None, token_budget: int | None = None,
               return_evidence: bool = False, instruction: str | None = None) -> Ranking:
        """Documents ranked best first (ties keep input order), at most ``top_n``.

        instruction: the task instruction of an instruct-aware reranker (a decoder exported with a
        prompt template that has an ``{instruction}`` field; ``accepts_instruction``); None: the
        manifest's default. Other models refuse one (InvalidArgumentError).

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
        token_budget: refuse (TokenBudgetError) a call whose pair rows hold more real tokens,
        before they run. Long documents are read only as far as their window needs
        (``crossrank.tokenize.encode_prefixes``); a result's ``dropped_tokens`` then counts the
        tokens read but left out, a lower bound (``truncated`` still says which were cut).
        return_evidence: each result carries its ``Evidence`` (the winning window's character
        offsets into the document and every window's score; tokenizing keeps the offsets).
        """
        started = self.clock()
        deadline_ms = check_deadline_ms(deadline_ms)
        if deadline_ms is None:
            return self.rerank_many([query], [documents], top_n, return_documents, raw_scores,
                                    max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc,
                                    token_budget=token_budget, return_evidence=return_evidence,
                                    instruction=instruction)[0]
        check_top_n(top_n)
        for value, name in ((return_documents, "return_documents"), (raw_scores, "raw_scores"),
                            (return_evidence, "return_evidence")):
            check_bool(value, name)
        cuts = self._cuts(max_tokens_per_doc, max_chunks_per_doc)
        token_budget = check_int(token_budget, "token_budget", allow_none=True)
        query = check_query(query)
        documents = check_texts(documents)
        instruction = self.tokenizer.check_instruction(instruction)
        deadline = Deadline(started + deadline_ms / 1e3, self.clock, self._seconds_per_token)
        scored = self._scores([query], np.zeros(len(documents), dtype=np.int64), documents, deadline, cuts,
                              return_evidence, token_budget, instruction)
        if deadline.spent_tokens:
            self._seconds_per_token = deadline.seconds_per_token
        n = scored.scored
        order = best_first(scored.logits[:n]).tolist() + list(range(n, len(documents)))
        scores = self._output(scored.logits, raw_scores)
        return scored.ranking(self._ranked(order[:top_n], scored, scores, documents, return_documents, raw_scores))

    def rerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                    top_n: int | None = None, return_documents: bool = True,
                    raw_scores: bool = False, *, max_tokens_per_doc: int | None = None,
                    max_chunks_per_doc: int | None = None, token_budget: int | None = None,
                    return_evidence: bool = False, instruction: str | None = None) -> list[Ranking]:
        """``rerank`` for several queries at once (one ``instruction`` for all); their pairs share
        batches (``token_budget``: for all of them)."""
        check_top_n(top_n)
        token_budget = check_int(token_budget, "token_budget", allow_none=True)
        instruction = self.tokenizer.check_instruction(instruction)
        for value, name in ((return_documents, "return_documents"), (raw_scores, "raw_scores"),
                            (return_evidence, "return_evidence")):
            check_bool(value, name)
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
        scored = self._scores(queries, query_of_doc, flat, cuts=cuts, evidence=return_evidence,
                              token_budget=token_budget, instruction=instruction)
        scores = self._output(scored.logits, raw_scores)
        results, start = [], 0
        for docs in doc_lists:
            part = slice(start, start + len(docs))
            order = best_first(scored.logits[part])[: top_n]
            ranked = self._ranked(order, scored, scores[part], docs, return_documents, raw_scores, offset=start)
            results.append(scored.ranking(ranked, scored=len(docs), part=part))
            start += len(docs)
        return results

    async def ascore(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False,
                     instruction: str | None = None) -> np.ndarray:
        """``score`` for asyncio callers (on a thread of its own; cancelling drops queued pairs)."""
        return await run_async(self.score, pairs, raw_scores, instruction)

    async def arerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
                      return_documents: bool = True, raw_scores: bool = False,
                      deadline_ms: float | None = None, *, max_tokens_per_doc: int | None = None,
                      max_chunks_per_doc: int | None = None, return_evidence: bool = False,
                      instruction: str | None = None) -> Ranking:
        """``rerank`` for asyncio callers (on a thread of its own; cancelling drops queued pairs)."""
        return await run_async(self.rerank, query, documents, top_n, return_documents, raw_scores, deadline_ms,
                               max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc,
                               return_evidence=return_evidence, instruction=instruction)

    async def arerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                           top_n: int | None = None, return_documents: bool = True,
                           raw_scores: bool = False, *, max_tokens_per_doc: int | None = None,
                           max_chunks_per_doc: int | None = None, return_evidence: bool = False,
                           instruction: str | None = None) -> list[Ranking]:
        """``rerank_many`` for asyncio callers."""
        return await run_async(self.rerank_many, queries, documents_per_query, top_n, return_documents, raw_scores,
                               max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc,
                               return_evidence=return_evidence, instruction=instruction)


__all__ = ["Evidence", "LONG_DOCUMENT_MODES", "Ranked", "RankedDocument", "RankedList", "Ranking", "Reranker", "Window",
           "best_first",
           "sigmoid"]
