"""What ``crossrank serve`` runs with, and its defaults (no web framework imported here)."""

from __future__ import annotations

from dataclasses import dataclass

from crossrank.settings import DEFAULT_MAX_QUEUE_TOKENS

DEFAULT_MAX_DOCUMENTS = 1000            # documents (or texts) per request; more: 413
DEFAULT_MAX_REQUEST_BYTES = 8 << 20     # request body; more: 413


@dataclass
class ServeConfig:
    """Each field is a flag of ``crossrank serve`` and a CROSSRANK_* environment variable."""

    reranker: str | None = None
    embedder: str | None = None
    index: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_queue_tokens: int = DEFAULT_MAX_QUEUE_TOKENS
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    shared: bool = True
    workers: int = 1                    # scheduler threads per model (with --threads 1: one per core)
    device: str = "cpu"
    threads: int | None = None


__all__ = ["DEFAULT_MAX_DOCUMENTS", "DEFAULT_MAX_QUEUE_TOKENS", "DEFAULT_MAX_REQUEST_BYTES", "ServeConfig"]
