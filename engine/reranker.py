"""Reranker: scores (query, document) pairs with an exported cross-encoder.

The hot path is split in three stages (as in infinity): ``_encode_pre`` tokenizes and assembles
rows, ``_encode_core`` runs them through the one BatchRunner path, ``_encode_post`` applies the
activation and restores input order (in chunk mode: the best window per document).

``rerank(..., deadline_ms=N)`` runs the same path with two differences: the rows run in the
caller's (first-stage) order instead of sorted by length, and a Deadline stops it before a batch
that would overrun. Settings tuned by ``crossrank tune`` (``runtime.json``) are used by default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from crossrank.artifact import check_graph, load_artifact
from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, check_bool, check_choice, check_deadline_ms,
                              check_int, check_queries, check_query, check_text, check_texts, check_top_n)
from crossrank.runner import BatchRunner, Deadline
from crossrank.scheduler import Scheduler, run_async
from crossrank.settings import MEMORY_ARENA, resolve_settings
from crossrank.tokenize import Rows, pair_tokenizer

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


ACTIVATIONS = {"sigmoid": sigmoid, "identity": lambda x: x}


class Reranker:
    """A cross-encoder artifact on ONNX Runtime.

    path: artifact folder from ``crossrank export --kind cross``. device: "cpu" or "cuda".
    threads: intra-op threads (default: physical cores). max_length: token window, at most the
    manifest's. batch_tokens: token budget per model call (rows x padded length).
    long_documents: "truncate" (default) keeps a document's first window; "chunk" scores
    overlapping windows (``chunk_overlap`` tokens, default min(64, a quarter of the
    window)) and keeps the best. io_binding: bind inputs on the device (default: on for CUDA).
    shared: run every call through one worker thread that merges concurrent callers' pairs into
    shared batches (``crossrank.scheduler``; ``self.scheduler``), with at most ``max_queue_tokens``
    tokens queued (beyond: OverloadedError) and ``workers`` threads running its batches (default 1;
    see ``crossrank.scheduler.Scheduler``). The async variants (``arerank``, ``ascore``,
    ``arerank_many``) work either way and never run the model on the event loop.

    threads, batch_tokens and io_binding left as None come from ``runtime.json`` in the artifact
    folder when it has a section for ``device`` (written by ``crossrank tune``), else the defaults
    (crossrank.settings); ``settings_origin`` says which. ``clock`` (attribute, default
    ``time.perf_counter``) times deadlines; tests replace it.
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None,
                 long_documents: str = "truncate", chunk_overlap: int | None = None, io_binding: bool | None = None,
                 memory_arena: bool = MEMORY_ARENA, shared: bool = False, max_queue_tokens: int | None = None,
                 workers: int = 1):
        settings, self.settings_origin = resolve_settings(path, device, threads, batch_tokens, io_binding)
        check_choice(long_documents, "long_documents", LONG_DOCUMENT_MODES)
        if not check_bool(shared, "shared") and (max_queue_tokens is not None or workers != 1):
            raise InvalidArgumentError("max_queue_tokens and workers configure the shared queue: pass them with "
                                       "shared=True")
        self.artifact = load_artifact(path, expect_kind="cross")
        limit = self.artifact.max_length
        self.max_length = check_int(max_length, "max_length", 8, limit, allow_none=True) or limit
        self.tokenizer = pair_tokenizer(self.artifact.tokenizer_path, self.max_length,
                                        self.artifact.manifest.get("prompt"))
        most = self.tokenizer.max_query_tokens  # windows then still advance by at least half
        if chunk_overlap is None:
            chunk_overlap = min(64, most // 2)
        check_int(chunk_overlap, f"chunk_overlap (for max_length {self.max_length})", 0, most - 1)
        self.long_documents = long_documents
        self.chunk_overlap = chunk_overlap
        self.activation = ACTIVATIONS[self.artifact.manifest["activation"]]
        self.runner = BatchRunner(self.artifact.model_path, settings, memory_arena=memory_arena)
        check_graph(self.artifact, self.runner.session)
        self.scheduler = Scheduler(self.runner, self.tokenizer.pad_id, max_queue_tokens, name="reranker",
                                   workers=workers) if shared else None
        self.device = device
        self.clock: Callable[[], float] = time.perf_counter
        self._seconds_per_token: float | None = None  # measured by the last deadline call

    # -- the three stages -------------------------------------------------------------------
    def _encode_pre(self, queries: list[str], query_of_doc: np.ndarray, documents: list[str],
                    instruction: str | None = None) -> Rows:
        query_ids = self.tokenizer.encode_queries(queries, instruction)
        doc_ids = self.tokenizer.encode_documents(documents) if documents else []
        overlap = self.chunk_overlap if self.long_documents == "chunk" else None
        return self.tokenizer.pair_rows(query_ids, query_of_doc, doc_ids, chunk_overlap=overlap)

    def _encode_core(self, rows: Rows, deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        runner = self.runner if self.scheduler is None else self.scheduler
        return runner.run(rows, self.tokenizer.pad_id, order="length" if deadline is None else "input",
                          deadline=deadline)

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
                deadline: Deadline | None = None, instruction: str | None = None) -> tuple[np.ndarray, int]:
        """Scores in input order and how many leading documents were scored (all, without a
        deadline; the rest are nan)."""
        scores = np.full(len(documents), np.nan, dtype=np.float32)
        for start in range(0, len(documents), CHUNK_DOCUMENTS):
            part = slice(start, start + CHUNK_DOCUMENTS)
            rows = self._encode_pre(queries, query_of_doc[part], documents[part], instruction)
            logits, done = self._encode_core(rows, deadline)
            part_scores, scored = self._encode_post(rows, logits, done, len(documents[part]), raw)
            scores[start: start + scored] = part_scores[:scored]
            if start + scored < min(start + CHUNK_DOCUMENTS, len(documents)):
                return scores, start + scored
        return scores, len(documents)

    # -- public API -------------------------------------------------------------------------
    def score(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False,
              instruction: str | None = None) -> np.ndarray:
        """Scores of (query, document) pairs in input order, float32. ``instruction``: see ``rerank``."""
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise ArgumentTypeError(f"pairs must be a list of (query, document) tuples, got {type(pairs).__name__}")
        check_bool(raw_scores, "raw_scores")
        instruction = self.tokenizer.check_instruction(instruction)
        query_index: dict[str, int] = {}
        query_of_doc, documents = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ArgumentTypeError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.80}")
            query = check_query(pair[0], f"pairs[{i}][0]")
            query_of_doc.append(query_index.setdefault(query, len(query_index)))
            documents.append(check_text(pair[1], f"pairs[{i}][1]"))
        return self._scores(list(query_index), np.asarray(query_of_doc, dtype=np.int64), documents, raw_scores,
                            instruction=instruction)[0]

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = True, raw_scores: bool = False,
               deadline_ms: float | None = None, instruction: str | None = None) -> RankedList:
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
        """
        started = self.clock()
        deadline_ms = check_deadline_ms(deadline_ms)
        if deadline_ms is None:
            return RankedList(self.rerank_many([query], [documents], top_n, return_documents, raw_scores,
                                               instruction)[0], scored=len(documents))
        check_top_n(top_n)
        check_bool(return_documents, "return_documents")
        check_bool(raw_scores, "raw_scores")
        query = check_query(query)
        documents = check_texts(documents)
        instruction = self.tokenizer.check_instruction(instruction)
        deadline = Deadline(started + deadline_ms / 1e3, self.clock, self._seconds_per_token)
        scores, scored = self._scores([query], np.zeros(len(documents), dtype=np.int64), documents, raw_scores,
                                      deadline, instruction)
        if deadline.spent_tokens:
            self._seconds_per_token = deadline.seconds_per_token
        order = np.argsort(-scores[:scored], kind="stable").tolist() + list(range(scored, len(documents)))
        ranked = [Ranked(i, float(scores[i]), documents[i] if return_documents else None) for i in order[:top_n]]
        return RankedList(ranked, scored=scored)

    def rerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                    top_n: int | None = None, return_documents: bool = True,
                    raw_scores: bool = False, instruction: str | None = None) -> list[RankedList]:
        """``rerank`` for several queries at once (one ``instruction`` for all); their pairs share batches."""
        check_top_n(top_n)
        check_bool(return_documents, "return_documents")
        check_bool(raw_scores, "raw_scores")
        instruction = self.tokenizer.check_instruction(instruction)
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
        scores = self._scores(queries, query_of_doc, flat, raw_scores, instruction=instruction)[0]
        results, start = [], 0
        for docs in doc_lists:
            part = scores[start: start + len(docs)]
            start += len(docs)
            order = np.argsort(-part, kind="stable")[: top_n]
            results.append(RankedList([Ranked(int(i), float(part[i]), docs[i] if return_documents else None)
                                       for i in order], scored=len(docs)))
        return results

    async def ascore(self, pairs: Sequence[tuple[str, str]], raw_scores: bool = False,
                     instruction: str | None = None) -> np.ndarray:
        """``score`` for asyncio callers (on a thread of its own; cancelling drops queued pairs)."""
        return await run_async(self.score, pairs, raw_scores, instruction)

    async def arerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
                      return_documents: bool = True, raw_scores: bool = False,
                      deadline_ms: float | None = None, instruction: str | None = None) -> RankedList:
        """``rerank`` for asyncio callers (on a thread of its own; cancelling drops queued pairs)."""
        return await run_async(self.rerank, query, documents, top_n, return_documents, raw_scores, deadline_ms,
                               instruction)

    async def arerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[str]],
                           top_n: int | None = None, return_documents: bool = True,
                           raw_scores: bool = False, instruction: str | None = None) -> list[RankedList]:
        """``rerank_many`` for asyncio callers."""
        return await run_async(self.rerank_many, queries, documents_per_query, top_n, return_documents, raw_scores,
                               instruction)

    def close(self) -> None:
        """Stop the shared worker thread, if any (calls still queued fail with UsageError)."""
        if self.scheduler is not None:
            self.scheduler.close()

    @property
    def accepts_instruction(self) -> bool:
        """Whether ``rerank(..., instruction=)`` is taken (an instruct-aware prompt template)."""
        return self.tokenizer.accepts_instruction

    @property
    def padding_fraction(self) -> float:
        """Share of computed tokens that were padding, over this Reranker's life."""
        return self.runner.stats.padding_fraction


__all__ = ["LONG_DOCUMENT_MODES", "Ranked", "RankedList", "Reranker", "sigmoid"]
