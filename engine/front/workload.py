"""Rerank workloads for bench and tune: the user's JSONL requests or the bundled TREC RAG ones."""

from __future__ import annotations

from pathlib import Path

from crossrank.errors import InvalidArgumentError
from crossrank.evaluation.datasets import load_trec_rag, read_jsonl


def read_workload(path: str | Path) -> list[dict]:
    """Requests ``{"query": str, "documents": [str, ...]}``, one JSON object per line (.jsonl,
    optionally .gz). Blank lines are skipped; a bad line is an error naming file and line."""
    requests = []
    for where, _, row in read_jsonl(path, "workload file", ("query", "documents")):
        query, documents = row["query"], row["documents"]
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgumentError(f'{where}: "query" must be a non-empty string, got {query!r:.60}')
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            raise InvalidArgumentError(f'{where}: "documents" must be a non-empty list of strings')
        requests.append({"query": query, "documents": documents})
    if not requests:
        raise InvalidArgumentError(f"workload file {str(path)!r} holds no requests")
    return requests


def load_workload(path: str | Path | None) -> tuple[list[dict], str]:
    """(requests, description): the JSONL file at ``path``, or the bundled TREC RAG workload."""
    if path is not None:
        return read_workload(path), str(path)
    return load_trec_rag(), "TREC RAG 2024 (ir-axioms==1.2.5), 20 MS MARCO passages per query"


def spread(requests: list[dict], count: int | None) -> list[dict]:
    """``count`` requests evenly spread over the workload (all when count is None or larger)."""
    if count is None or count >= len(requests):
        return list(requests)
    step = len(requests) / count
    return [requests[int(i * step)] for i in range(count)]


def request_of_size(requests: list[dict], size: int, start: int = 0) -> tuple[str, list[str]]:
    """The query of request ``start`` with ``size`` documents: its own first, then the next
    requests' (wrapping around), so the documents are real candidates of real length."""
    query = requests[start % len(requests)]["query"]
    documents: list[str] = []
    i = start
    while len(documents) < size:
        documents.extend(requests[i % len(requests)]["documents"])
        i += 1
    return query, documents[:size]

__all__ = ["load_workload", "read_workload", "request_of_size", "spread"]
