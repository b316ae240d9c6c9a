"""What ``crossrank serve`` runs with, and its defaults (no web framework, no Ray imported here).

``ServeConfig`` checks itself when it is made, so every way in (flags, CROSSRANK_* variables, a
Ray Serve YAML's args, Python) gets the same checks and the same messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from crossrank.errors import ArgumentTypeError, MissingFileError, UsageError, check_bool, check_int
from crossrank.settings import DEFAULT_MAX_QUEUE_TOKENS, WORKERS_RANGE, check_device, check_threads

DEFAULT_MAX_DOCUMENTS = 1000            # documents (or texts) per request; more: 413
DEFAULT_MAX_REQUEST_BYTES = 8 << 20     # request body; more: 413
MODEL_FLAGS = {"reranker": "--reranker ART", "embedder": "--embedder ART", "index": "--index DIR"}


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

    def __post_init__(self):
        for what in MODEL_FLAGS:
            path = getattr(self, what)
            if path is not None and not isinstance(path, (str, Path)):
                raise ArgumentTypeError(f"{what} must be a folder path (str), got {type(path).__name__}")
            if path is not None:
                setattr(self, what, str(path))
        if not isinstance(self.host, str) or not self.host:
            raise ArgumentTypeError(f"host must be an address (str), got {self.host!r:.60}")
        check_int(self.port, "port", 0, 65535)
        check_int(self.max_queue_tokens, "max_queue_tokens")
        check_int(self.max_documents, "max_documents")
        check_int(self.max_request_bytes, "max_request_bytes")
        check_bool(self.shared, "shared")
        check_int(self.workers, "workers", *WORKERS_RANGE)
        check_device(self.device)
        check_threads(self.threads)

    def require_models(self) -> None:
        """The models a server needs: a reranker and/or an embedder, an index only with the
        embedder that built it, every one an existing folder."""
        if not self.reranker and not self.embedder:
            raise UsageError("crossrank serve needs a model: --reranker ART and/or --embedder ART "
                             "(or CROSSRANK_RERANKER / CROSSRANK_EMBEDDER)")
        if self.index and not self.embedder:
            raise UsageError("--index needs --embedder (the artifact that built the index) to embed queries")
        for what, flag in MODEL_FLAGS.items():
            path = getattr(self, what)
            if path and not Path(path).is_dir():
                raise MissingFileError(f"{flag.split()[0]} {path!r} is not a folder")

    def as_dict(self) -> dict:
        return asdict(self)


__all__ = ["DEFAULT_MAX_DOCUMENTS", "DEFAULT_MAX_QUEUE_TOKENS", "DEFAULT_MAX_REQUEST_BYTES", "MODEL_FLAGS",
           "ServeConfig"]
