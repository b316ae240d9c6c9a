"""What ``crossrank serve`` runs with, and its defaults (no web framework, no Ray imported here).

``ServeConfig`` checks itself when it is made, so every way in (flags, CROSSRANK_* variables, a
Ray Serve YAML's args, Python) gets the same checks and the same messages.

Several models in one process: ``reranker`` and ``embedder`` each take one artifact folder, a
``NAME=FOLDER`` entry, a list of them, a comma-separated string of them (an environment
variable) or a mapping of name -> folder; a folder without a name is named by its folder (e.g.
``starter-reranker-int8``). ``cascade`` takes ``NAME=SPEC`` entries, SPEC being served rerankers'
names with depths, ``fast=L4@50>starter@10``. After the checks each of the three is a dict of
name -> folder (or spec), in the order given: the first of each kind is its default model. Names
are unique across the three.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, MissingFileError, UsageError, check_bool,
                              check_choice, check_int, check_number)
from crossrank.settings import (DEFAULT_MAX_QUEUE_TOKENS, WORKERS_RANGE, ServeLayout, check_device, check_threads,
                                layout_rule, physical_cores, runtime_layout)

DEFAULT_MAX_DOCUMENTS = 1000            # documents (or texts) per request, candidates (k) per search; more: 413/422
DEFAULT_MAX_REQUEST_BYTES = 8 << 20     # request body; more: 413
DEFAULT_MAX_REQUEST_TOKENS = 1 << 19    # real tokens one request may run (a full request of 512-token windows fits)
DEFAULT_BODY_TIMEOUT_S = 30.0           # from the end of the headers to the end of the body; past it: 408
# the HTTP layer's (crossrank.front.serve.http.HttpLimits)
DEFAULT_HEADER_TIMEOUT_S = 10.0         # from a connection's opening to the end of its request headers: 408
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0      # an idle kept-alive connection is closed
DEFAULT_SHUTDOWN_GRACE_S = 30.0         # SIGTERM: requests in flight get this long
DEFAULT_MAX_CONNECTIONS = 10_000        # open connections (or the open-file limit less 64, if lower); more: 503
MODEL_FLAGS = {"reranker": "--reranker [NAME=]ART", "embedder": "--embedder [NAME=]ART", "index": "--index DIR"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
# How the models of one server share the machine's cores: "shared" = one budget of model calls
# for all of them (CoreBudget: calls take turns, first come first served), "per-model" = each model's
# scheduler runs its calls whenever they come and the operating system shares the cores. Default
# per-model: lower p95 and more requests/s under a mixed load (benchmarks/results/multimodel.md; on
# 2 cores one call at a time leaves them idle where a session's second thread scales poorly).
CORE_SHARING = ("shared", "per-model")
DEFAULT_CORE_SHARING = "per-model"


def _entries(value: Any, what: str) -> list[tuple[str | None, str]]:
    """(name or None, text) of each entry of a model setting (see the module docstring)."""
    if value is None:
        return []
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for entry in value:
            if isinstance(entry, Path):
                entry = str(entry)
            if not isinstance(entry, str) or not entry.strip():
                raise ArgumentTypeError(f"{what} entries must be folder paths or NAME=FOLDER strings, got {entry!r:.60}")
            name, sep, text = entry.partition("=")
            items.append((name.strip(), text.strip()) if sep and "/" not in name else (None, entry.strip()))
    else:
        raise ArgumentTypeError(f"{what} must be a folder path, NAME=FOLDER, a list of them or a mapping of name -> "
                                f"folder, got {type(value).__name__}")
    for name, text in items:
        if not isinstance(text, (str, Path)) or not str(text).strip():
            raise ArgumentTypeError(f"{what} {name!r}: expected a folder path (or spec), got {text!r:.60}")
    return [(name, str(text)) for name, text in items]


def named(value: Any, what: str, taken: dict[str, str]) -> dict[str, str]:
    """A model setting as {name: folder or spec}; names checked (``NAME_RULE``) and unique among
    ``taken`` (name -> the setting it belongs to), which gains them."""
    out = {}
    for name, text in _entries(value, what):
        if name is None:
            name = Path(text.rstrip("/")).name
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidArgumentError(f"{what} name {name!r:.60} is not a model name ({NAME_RULE}); give one as "
                                       f"NAME={text}")
        if name in taken:
            raise InvalidArgumentError(f"model name {name!r} is given twice ({taken[name]} and {what}): names must be "
                                       f"unique; give one as NAME=FOLDER")
        taken[name] = what
        out[name] = text
    return out


def parse_cascade(name: str, spec: str, rerankers: dict[str, str]) -> list[tuple[str, int | None]]:
    """The stages of a cascade spec ``A@50>B@10`` as (reranker name, depth); a depth may be left out
    on the first stage (every document). Names must be served rerankers; depths may not grow."""
    stages = []
    for number, part in enumerate(spec.split(">"), start=1):
        stage, _, depth_text = part.strip().partition("@")
        if stage not in rerankers:
            raise InvalidArgumentError(f"cascade {name}={spec}: stage {number} {stage!r} is not a served reranker "
                                       f"(served: {', '.join(rerankers) or 'none'}); a cascade is NAME@DEPTH>NAME@DEPTH "
                                       f"of --reranker names")
        if not depth_text and number > 1:
            raise InvalidArgumentError(f"cascade {name}={spec}: stage {number} ({stage}) needs a depth, e.g. "
                                       f"{stage}@10 (how many of the previous stage's best it reranks)")
        try:
            depth = check_int(int(depth_text), "depth") if depth_text else None
        except ValueError:
            raise InvalidArgumentError(f"cascade {name}={spec}: stage {number} depth {depth_text!r} is not a "
                                       f"positive integer") from None
        if stages and stages[-1][1] is not None and depth > stages[-1][1]:
            raise InvalidArgumentError(f"cascade {name}={spec}: depths must not grow ({stage}@{depth} after "
                                       f"{stages[-1][0]}@{stages[-1][1]})")
        stages.append((stage, depth))
    return stages


@dataclass
class ServeConfig:
    """Each field is a flag of ``crossrank serve`` and a CROSSRANK_* environment variable.
    ``reranker``, ``embedder`` and ``cascade``: see the module docstring (dicts once checked)."""

    reranker: Any = None
    embedder: Any = None
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
    workers: int | None = None          # scheduler threads per model (None: the layout's, see serve_layout)
    device: str = "cpu"
    threads: int | None = None          # intra-op threads per worker (None: the layout's)
    cascade: Any = None
    core_sharing: str = DEFAULT_CORE_SHARING
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
        taken: dict[str, str] = {}
        self.reranker = named(self.reranker, "reranker", taken)
        self.embedder = named(self.embedder, "embedder", taken)
        self.cascade = named(self.cascade, "cascade", taken)
        for name, spec in self.cascade.items():
            parse_cascade(name, spec, self.reranker)
        for what in ("index", "store", "table", "api_key_file"):
            path = getattr(self, what)
            if path is not None and not isinstance(path, (str, Path)):
                raise ArgumentTypeError(f"{what} must be a str, got {type(path).__name__}")
            if path is not None:
                setattr(self, what, str(path))
        check_bool(self.hybrid, "hybrid")
        check_choice(self.core_sharing, "core_sharing", CORE_SHARING)
        if not isinstance(self.host, str) or not self.host:
            raise ArgumentTypeError(f"host must be an address (str), got {self.host!r:.60}")
        check_int(self.port, "port", 0, 65535)
        check_int(self.max_queue_tokens, "max_queue_tokens")
        check_int(self.max_documents, "max_documents")
        check_int(self.max_request_bytes, "max_request_bytes")
        check_bool(self.shared, "shared")
        check_int(self.workers, "workers", *WORKERS_RANGE, allow_none=True)
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
        for what in ("reranker", "embedder"):
            for name, path in getattr(self, what).items():
                if not Path(path).is_dir():
                    raise MissingFileError(f"--{what} {name}={path!r} is not a folder")
        store_folder = self.store if self.store and "://" not in self.store else None
        for flag, path in (("--index", self.index), ("--store", store_folder)):
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

    def layout(self, folder: str | Path) -> ServeLayout | None:
        """The layout (workers x threads) the model at ``folder`` is served with; see serve_layout."""
        return serve_layout(self.shared, self.workers, self.threads, self.device, folder)


def serve_layout(shared: bool, workers: int | None, threads: int | None, device: str,
                 folder: str | Path | None, cores: int | None = None) -> ServeLayout | None:
    """A served model's layout, from the first that says: the arguments (``--workers`` and/or
    ``--threads``; one of them given, the other fills the physical cores: workers x threads =
    cores), the artifact's runtime.json "serve" layout (``crossrank tune``), else
    ``crossrank.settings.layout_rule`` of the machine. None with sharing off: each request then
    runs its own batches on the caller's thread, with ``threads`` or the model's own (runtime.json,
    else every physical core), as the in-process API does."""
    if not shared:
        return None
    cores = cores or physical_cores()
    if workers is not None or threads is not None:
        workers = workers or max(1, min(WORKERS_RANGE[1], cores // threads))
        return ServeLayout(workers, threads or max(1, cores // workers), "argument")
    return (runtime_layout(folder, device) if folder is not None else None) or layout_rule(cores, device)


def _names(value, field: str) -> tuple[str, ...]:
    """A tuple of non-empty names from a list/tuple or a comma-separated str."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ArgumentTypeError(f"{field} must be a list of names (or one comma-separated str), got {value!r:.60}")
    return tuple(v.strip() for v in value if v.strip())



__all__ = ["CORE_SHARING", "DEFAULT_BODY_TIMEOUT_S", "DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_KEEP_ALIVE_TIMEOUT_S",
           "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_DOCUMENTS", "DEFAULT_MAX_QUEUE_TOKENS", "DEFAULT_MAX_REQUEST_BYTES",
           "DEFAULT_MAX_REQUEST_TOKENS", "DEFAULT_SHUTDOWN_GRACE_S", "MODEL_FLAGS", "ServeConfig", "named",
           "parse_cascade", "serve_layout"]
