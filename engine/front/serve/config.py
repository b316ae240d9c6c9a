"""What ``crossrank serve`` runs with, and its defaults (no web framework, no Ray imported here).

``ServeConfig`` checks itself when it is made, so every way in (flags, CROSSRANK_* variables, a
Ray Serve YAML's args, Python) gets the same checks and the same messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, MissingFileError, UsageError, check_bool,
                              check_int, check_number)
from crossrank.settings import DEFAULT_MAX_QUEUE_TOKENS, WORKERS_RANGE, check_device, check_threads

DEFAULT_MAX_DOCUMENTS = 1000            # documents (or texts) per request, candidates (k) per search; more: 413/422
DEFAULT_MAX_REQUEST_BYTES = 8 << 20     # request body; more: 413
DEFAULT_MAX_REQUEST_TOKENS = 1 << 19    # real tokens one request may run (a full request of 512-token windows fits)
DEFAULT_BODY_TIMEOUT_S = 30.0           # from the end of the headers to the end of the body; past it: 408
# the HTTP layer's (crossrank.front.serve.http.HttpLimits)
DEFAULT_HEADER_TIMEOUT_S = 10.0         # from a connection's opening to the end of its request headers: 408
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0      # an idle kept-alive connection is closed
DEFAULT_SHUTDOWN_GRACE_S = 30.0         # SIGTERM: requests in flight get this long
DEFAULT_MAX_CONNECTIONS = 10_000        # open connections (or the open-file limit less 64, if lower); more: 503
MODEL_FLAGS = {"reranker": "--reranker ART", "embedder": "--embedder ART", "index": "--index DIR"}


@dataclass
class ServeConfig:
    """Each field is a flag of ``crossrank serve`` and a CROSSRANK_* environment variable."""

    reranker: str | None = None
    embedder: str | None = None
    index: str | None = None
    store: str | None = None            # postgresql://..., milvus://... or an index folder (crossrank.stores)
    table: str | None = None            # the store's table or collection (default crossrank_documents)
    hybrid: bool = False                # dense + lexical candidates fused (RRF)
    host: str = "127.0.0.1"
    port: int = 8080
    max_queue_tokens: int = DEFAULT_MAX_QUEUE_TOKENS
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    shared: bool = True
    workers: int = 1                    # scheduler threads per model (with --threads 1: one per core)
    device: str = "cpu"
    threads: int | None = None
    # who may call, and how much (crossrank.front.serve.security)
    api_key_file: str | None = None     # name:key lines; CROSSRANK_API_KEYS adds keys
    protect_metrics: bool = False       # /metrics behind the keys too (/health stays open)
    key_tokens_per_second: int | None = None   # per key, unless its key-file line says otherwise
    key_max_concurrent: int | None = None
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    allowed_hosts: tuple[str, ...] = ()  # Host header names answered (empty: any)
    cors_origins: tuple[str, ...] = ()   # browser origins allowed to call (empty: CORS off)
    info_paths: bool = False            # /info shows filesystem paths
    openapi: bool = True                # /openapi.json (behind the keys when there are keys)

    def __post_init__(self):
        for what in (*MODEL_FLAGS, "store", "table", "api_key_file"):
            path = getattr(self, what)
            if path is not None and not isinstance(path, (str, Path)):
                raise ArgumentTypeError(f"{what} must be a str, got {type(path).__name__}")
            if path is not None:
                setattr(self, what, str(path))
        check_bool(self.hybrid, "hybrid")
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
        for flag in ("protect_metrics", "info_paths", "openapi"):
            check_bool(getattr(self, flag), flag)
        check_int(self.key_tokens_per_second, "key_tokens_per_second", allow_none=True)
        check_int(self.key_max_concurrent, "key_max_concurrent", allow_none=True)
        check_int(self.max_request_tokens, "max_request_tokens")
        self.body_timeout = check_number(self.body_timeout, "body_timeout")
        if self.body_timeout == 0:
            raise InvalidArgumentError("body_timeout must be a positive number of seconds, got 0")
        self.allowed_hosts = _names(self.allowed_hosts, "allowed_hosts")
        self.cors_origins = _names(self.cors_origins, "cors_origins")

    def require_models(self) -> None:
        """The models a server needs: a reranker and/or an embedder, a first stage (an index or a
        store) only with the embedder that built it, every folder existing."""
        if not self.reranker and not self.embedder:
            raise UsageError("crossrank serve needs a model: --reranker ART and/or --embedder ART "
                             "(or CROSSRANK_RERANKER / CROSSRANK_EMBEDDER)")
        if self.index and self.store:
            raise UsageError("give --index or --store, not both")
        if (self.index or self.store) and not self.embedder:
            raise UsageError("--index/--store needs --embedder (the artifact that built it) to embed queries")
        store_folder = self.store if self.store and "://" not in self.store else None
        for flag, path in (*((flag.split()[0], getattr(self, what)) for what, flag in MODEL_FLAGS.items()),
                           ("--store", store_folder)):
            if path and not Path(path).is_dir():
                raise MissingFileError(f"{flag} {path!r} is not a folder")

    def first_stage_name(self) -> str | None:
        """--store / --index as shown in logs and /info: passwords masked, the table named."""
        from crossrank.stores.common import mask_url

        if self.store and "://" in self.store:
            return f"{mask_url(self.store)} table {self.table or 'crossrank_documents'}" + \
                (" (hybrid)" if self.hybrid else "")
        where = self.store or self.index
        return f"{where} (hybrid)" if where and self.hybrid else where

    def as_dict(self) -> dict:
        return asdict(self)


def _names(value, field: str) -> tuple[str, ...]:
    """A tuple of non-empty names from a list/tuple or a comma-separated str."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ArgumentTypeError(f"{field} must be a list of names (or one comma-separated str), got {value!r:.60}")
    return tuple(v.strip() for v in value if v.strip())


__all__ = ["DEFAULT_BODY_TIMEOUT_S", "DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_KEEP_ALIVE_TIMEOUT_S",
           "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_DOCUMENTS", "DEFAULT_MAX_QUEUE_TOKENS", "DEFAULT_MAX_REQUEST_BYTES",
           "DEFAULT_MAX_REQUEST_TOKENS", "DEFAULT_SHUTDOWN_GRACE_S", "MODEL_FLAGS", "ServeConfig"]
