"""The one place runtime defaults live, and ``runtime.json``: per-machine settings of an artifact.

A model's session options (``SessionOptions``) come from, in order: the constructor's arguments,
the artifact folder's ``runtime.json`` section for the device (written by ``crossrank tune``), then
the defaults below. ``SessionOptions.resolve`` applies that order and says where each value came from.

``runtime.json`` is not listed in the manifest (it is per machine, not part of the model): loading
checks the manifest's files only, and ``tune`` never touches the manifest. Format (one section per
device; a section's keys are all optional)::

    {"format": 1,
     "cpu": {"threads": 2, "batch_tokens": 4096, "io_binding": false, "backend": "onnxruntime",
             "precision": "int8", "spinning": "within-calls",
             "measured": {... what tune measured, free-form ...},
             "serve": {"workers": 2, "threads": 1, "concurrency": [1, 16],
                       "measured": {... the layouts tune measured under that load ...}}}}

``serve`` is the served layout (``ServeLayout``: scheduler workers x intra-op threads per worker)
that ``crossrank tune`` measured fastest under concurrent callers; ``crossrank serve`` runs the
model with it (the section's own ``threads`` is for one caller at a time, the in-process API's).

A malformed file is an error naming the file and the bad key or value, never silently ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from crossrank.errors import (ArgumentTypeError, InvalidArgumentError, RuntimeConfigError, check_bool, check_choice,
                              check_fields, check_int, is_bool, is_int, is_object, is_one_of)
from crossrank.locks import write_text_atomically

DEVICES = ("cpu", "cuda")
# Token budget per model call (rows x padded length). cpu: 512. The per-row int8 reranker on the
# TREC RAG pairs runs 1.36x faster (CPU time, 1 thread) and 1.44x (wall, 2 threads) at 256-512 than
# at 2048: smaller activations and attention buffers stay in cache; fp32 gains 1.14x at 1 thread
# (measured with benchmarks/int8_recipes.py's harness; `crossrank bench --budgets` draws the curve,
# `crossrank tune` picks the budget per machine). cuda: large batches keep the GPU busy.
DEFAULT_BATCH_TOKENS = {"cpu": 512, "cuda": 65536}
MAX_ROWS = 256                      # rows per model call, whatever the budget
# Shared models (crossrank.scheduler): real tokens that may wait in one model's queue before new
# work is refused (OverloadedError; HTTP 429), and how many batches' worth of queued rows the worker
# takes at a time, round-robin across requests, to sort by length and cut into batches.
DEFAULT_MAX_QUEUE_TOKENS = 1 << 20
SCHEDULER_WINDOW_BATCHES = 4
WORKERS_RANGE = (1, 64)             # scheduler threads per shared model
THREADS_RANGE = (1, 1024)
BATCH_TOKENS_RANGE = (16, 1 << 22)
# ONNX Runtime graph optimisation at load. The export already ran the transformer fusions
# (Attention, SkipLayerNormalization, ...) and saved the fused graph; see benchmarks/cold_start.py
# for what each level costs at load and gains per call.
GRAPH_OPTIMIZATION = "all"
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
# Intra-op thread spinning: "always" (ONNX Runtime's own default: idle workers busy-wait, also
# between calls), "within-calls" (busy-wait while a call runs, stop as soon as it returns:
# session.force_spinning_stop) or "never" (workers sleep whenever idle). The default is for the
# common deployment, a quiet machine dedicated to the service: there the int8 reranker scored
# 47.5 pairs/s with "within-calls" against 41.5 with "never" (1.14x; issue 20, 2 vCPUs of a Xeon).
# On a machine shared with other work busy-waiting workers steal the cores the slowest worker
# needs ("never" scored 1.7x "within-calls" on 2 loaded cores): `crossrank tune` measures both and
# writes "never" to runtime.json where it wins. OpenVINO sessions ignore it (their own threading).
SPINNING = "within-calls"
SPINNING_MODES = ("within-calls", "always", "never")
# ONNX Runtime's CPU arena keeps the largest buffers it ever served, so with requests of varying
# shapes RSS only grows: off by default (see the memory soak in benchmarks/rerank_bench.py).
MEMORY_ARENA = False
# Long texts are cut before they are tokenized (crossrank.tokenize.encode_prefixes): a text is read
# up to CUT_CHARS_PER_TOKEN characters per token its window can hold, cut at a word boundary; when
# that prefix holds fewer tokens than the window (much whitespace, very long words) it is read
# again CUT_GROWTH times further, up to CUT_MAX_CHARS_PER_TOKEN characters per token (and at least
# CUT_MIN_CHARS: a word longer than WordPiece's 100 characters stays one [UNK]). A 5 MB document
# then costs what its window holds, and the ids are those of the whole text.
CUT_CHARS_PER_TOKEN = 8
CUT_GROWTH = 4
CUT_MAX_CHARS_PER_TOKEN = 64
CUT_MIN_CHARS = 4096

# Backends (crossrank.session): ONNX Runtime (CPU, CUDA) and OpenVINO (CPU; extra "openvino").
# A model's default backend and precision follow the CPU's ISA (crossrank.isa's rule).
BACKENDS = ("onnxruntime", "openvino")
# Load-time precisions: the artifact's own (fp32, int8, fp16), or bf16 (an fp32 artifact computed
# in bf16 by OpenVINO on a CPU with AVX-512 BF16 or AMX, with a passing certificate).
PRECISIONS = ("fp32", "bf16", "int8", "fp16")

RUNTIME_FILE = "runtime.json"
RUNTIME_FORMAT = 1
TUNABLE = ("threads", "batch_tokens", "io_binding", "backend", "precision", "spinning")
# Where a served model's layout comes from: flags or environment ("argument"), the artifact's
# runtime.json "serve" section (`crossrank tune`), or ``layout_rule`` of the machine ("rule").
LAYOUT_ORIGINS = ("argument", RUNTIME_FILE, "rule")


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


@dataclass(frozen=True)
class ServeLayout:
    """How a served model uses the cores under concurrent callers: ``workers`` scheduler threads,
    each running its own window of batches on the model's one session, which has ``threads``
    intra-op threads (crossrank.scheduler). ``origin``: one of LAYOUT_ORIGINS."""

    workers: int
    threads: int
    origin: str = "rule"

    def __post_init__(self):
        check_int(self.workers, "workers", *WORKERS_RANGE)
        check_threads(self.threads, allow_none=False)
        check_choice(self.origin, "origin", LAYOUT_ORIGINS)

    def text(self) -> str:
        return (f"{self.workers} worker{'s' * (self.workers > 1)} x {self.threads} thread{'s' * (self.threads > 1)} "
                f"({self.origin})")


def layout_rule(cores: int, device: str = "cpu") -> ServeLayout:
    """The served layout without a tuned one: on CPU one worker per physical core, each on a
    one-thread session (past WORKERS_RANGE's cap, the cores split evenly over the most workers);
    on CUDA one worker (the GPU runs one batch at a time) with ``cores`` host threads.

    Why: a 1 x 20 rerank request is many small batches (~1.4 rows at the CPU's 512-token budget),
    and splitting one small batch across cores synchronises more than it computes (two threads
    ran at 0.63x per core on a 2-vCPU Xeon, 0.54x on an AMD EPYC). Running whole batches side by
    side keeps every core busy under concurrent callers, and a lone request is shared out over the
    workers (crossrank.scheduler), so it still runs on every core. Measured on 2 cores
    (benchmarks/results/serve_layouts.md); ``crossrank tune`` measures it per machine."""
    cores = check_int(cores, "cores", 1)
    if check_device(device) == "cuda":
        return ServeLayout(1, cores, "rule")
    workers = min(cores, WORKERS_RANGE[1])
    return ServeLayout(workers, max(1, cores // workers), "rule")


def check_device(device) -> str:
    return check_choice(device, "device", DEVICES)


def check_threads(threads, allow_none: bool = True):
    return check_int(threads, "threads", *THREADS_RANGE, allow_none=allow_none)


def check_batch_tokens(batch_tokens, allow_none: bool = True):
    return check_int(batch_tokens, "batch_tokens", *BATCH_TOKENS_RANGE, allow_none=allow_none)


def check_optimization(optimization, allow_none: bool = True):
    return None if optimization is None and allow_none else \
        check_choice(optimization, "optimization", GRAPH_OPTIMIZATIONS)


def check_spinning(spinning, allow_none: bool = True):
    return None if spinning is None and allow_none else check_choice(spinning, "spinning", SPINNING_MODES)


def check_backend(backend, allow_none: bool = True):
    return None if backend is None and allow_none else check_choice(backend, "backend", BACKENDS)


def check_precision(precision, allow_none: bool = True):
    return None if precision is None and allow_none else check_choice(precision, "precision", PRECISIONS)


def default_settings(device: str) -> dict:
    """The tunable settings (runtime.json's) a model uses without runtime.json and without arguments."""
    check_device(device)
    return {"threads": physical_cores(), "batch_tokens": DEFAULT_BATCH_TOKENS[device], "io_binding": device == "cuda"}


def default_options(device: str) -> dict:
    """Every session option's default for ``device`` (backend and precision: ONNX Runtime and the
    artifact's own precision, None here; a model replaces them by crossrank.isa's rule)."""
    return {**default_settings(device), "memory_arena": MEMORY_ARENA, "optimization": GRAPH_OPTIMIZATION,
            "spinning": SPINNING, "profile_prefix": None, "backend": "onnxruntime", "precision": None,
            "allow_low_fidelity": False}


ORIGINS = ("argument", RUNTIME_FILE, "default")


@dataclass(frozen=True)
class SessionOptions:
    """How a model's ONNX Runtime session and batch planner run: the one options object that
    ``Reranker``, ``Embedder``, ``BatchRunner`` and ``crossrank.session.build_session`` agree on.

    threads: intra-op threads. batch_tokens: token budget per model call (rows x padded length).
    io_binding: bind inputs on the device (CUDA). memory_arena: ONNX Runtime's CPU arena (see
    MEMORY_ARENA). optimization: graph optimisation level at load, one of GRAPH_OPTIMIZATIONS.
    spinning: intra-op thread spinning, one of SPINNING_MODES. profile_prefix: write ONNX Runtime's
    per-operator profile to files starting with it (``Model.end_profiling()`` returns the file).
    backend: one of BACKENDS. precision: one of PRECISIONS (the artifact's own, or bf16 on
    OpenVINO). allow_low_fidelity: run a precision that has no passing fidelity certificate
    (crossrank.certificate) instead of refusing it.

    A field left None is not chosen. ``resolve(folder, device)`` returns the options a model runs
    with: each field from, in order, this object, the artifact folder's runtime.json section for the
    device (TUNABLE: what ``crossrank tune`` writes), the defaults above (or ``defaults``);
    ``origin`` then says where each value came from ("argument", "runtime.json" or "default").
    Values are checked when the object is made: a bad one raises InvalidArgumentError naming it.
    """

    threads: int | None = None
    batch_tokens: int | None = None
    io_binding: bool | None = None
    memory_arena: bool | None = None
    optimization: str | None = None
    spinning: str | None = None
    profile_prefix: str | None = None
    backend: str | None = None
    precision: str | None = None
    allow_low_fidelity: bool | None = None
    origin: Mapping[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self):
        check_threads(self.threads)
        check_batch_tokens(self.batch_tokens)
        check_bool(self.io_binding, "io_binding", allow_none=True)
        check_bool(self.memory_arena, "memory_arena", allow_none=True)
        check_optimization(self.optimization)
        check_spinning(self.spinning)
        check_backend(self.backend)
        check_precision(self.precision)
        check_bool(self.allow_low_fidelity, "allow_low_fidelity", allow_none=True)
        if self.profile_prefix is not None:
            if not isinstance(self.profile_prefix, (str, os.PathLike)):
                raise ArgumentTypeError(f"profile_prefix must be a path (str) or None, got "
                                        f"{type(self.profile_prefix).__name__}")
            object.__setattr__(self, "profile_prefix", os.fspath(self.profile_prefix))
        object.__setattr__(self, "origin", MappingProxyType(dict(self.origin)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.init)

    def values(self) -> dict:
        """Every option's value (None where not chosen), without the origins."""
        return {name: getattr(self, name) for name in self.names()}

    def chosen(self) -> dict:
        """The options given (not None)."""
        return {name: value for name, value in self.values().items() if value is not None}

    @property
    def resolved(self) -> bool:
        return set(self.origin) == set(self.names())

    def merged(self, **given) -> "SessionOptions":
        """These options plus keyword ones (None: not given). An option given both ways with two
        different values is an InvalidArgumentError (it would be ambiguous which one runs)."""
        values = self.values()
        for name, value in given.items():
            if value is None:
                continue
            if name not in values:
                raise ArgumentTypeError(f"unknown session option {name!r}; known: {', '.join(self.names())}")
            if values[name] is not None and values[name] != value:
                raise InvalidArgumentError(f"{name} is given twice: {name}={value!r} and options.{name}="
                                           f"{values[name]!r}; give it once")
            values[name] = value
        return SessionOptions(**values)

    def resolve(self, folder: str | Path | None, device: str, defaults: dict | None = None) -> "SessionOptions":
        """Every option filled in (see the class docstring), with ``origin`` for each; ``defaults``
        replaces some of the defaults (a model's ISA rule for backend and precision)."""
        check_device(device)
        tuned = runtime_settings(folder, device) if folder is not None else {}
        default = {**default_options(device), **(defaults or {})}
        chosen, origin = {}, {}
        for name, value in self.values().items():
            if value is not None:
                chosen[name], origin[name] = value, "argument"
            elif name in tuned:
                chosen[name], origin[name] = tuned[name], RUNTIME_FILE
            else:
                chosen[name], origin[name] = default[name], "default"
        options = SessionOptions(**chosen)
        object.__setattr__(options, "origin", MappingProxyType(origin))
        return options


    def with_defaults(self, **values) -> "SessionOptions":
        """A copy where the options that came from the defaults take ``values`` instead (still
        origin "default"): how a model applies a default that depends on its artifact and CPU."""
        if not self.resolved:
            raise InvalidArgumentError("with_defaults applies to resolved options (resolve them first)")
        chosen = self.values()
        chosen.update({k: v for k, v in values.items() if self.origin[k] == "default"})
        options = SessionOptions(**chosen)
        object.__setattr__(options, "origin", self.origin)
        return options


# -- runtime.json: read, validate, write ------------------------------------------------------

# runtime.json's schema: a format, then per device a section of tunable settings (all optional)
def is_concurrency(value) -> str | None:
    """A list of concurrent callers (positive integers), e.g. [1, 16]."""
    if not isinstance(value, list) or not value or any(is_int(1)(v) for v in value):
        return f"must be a non-empty list of positive integers (concurrent callers), got {value!r:.60}"
    return None


SERVE_FIELDS = {"workers": is_int(*WORKERS_RANGE), "threads": is_int(*THREADS_RANGE), "concurrency": is_concurrency,
                "measured": is_object}
SECTION_FIELDS = {"threads": is_int(*THREADS_RANGE), "batch_tokens": is_int(*BATCH_TOKENS_RANGE),
                  "io_binding": is_bool, "backend": is_one_of(*BACKENDS), "precision": is_one_of(*PRECISIONS),
                  "spinning": is_one_of(*SPINNING_MODES), "measured": is_object, "serve": is_object}


def validate_runtime(document: Any, where: str = RUNTIME_FILE) -> dict:
    """Check a parsed runtime.json; returns it unchanged or raises RuntimeConfigError."""
    if isinstance(document, dict) and "format" in document and document["format"] != RUNTIME_FORMAT:
        raise RuntimeConfigError(
            f"{where}: 'format' = {document['format']!r} is not {RUNTIME_FORMAT}: run `crossrank tune` again")
    check_fields(document, where, {"format": is_int(), **{device: is_object for device in DEVICES}}, ("format",),
                 RuntimeConfigError)
    for device in DEVICES:
        if device in document:
            check_fields(document[device], where, SECTION_FIELDS, (), RuntimeConfigError, section=device)
            if "serve" in document[device]:
                check_fields(document[device]["serve"], where, SERVE_FIELDS, ("workers", "threads"),
                             RuntimeConfigError, section=f"{device}.serve")
    return document


def read_runtime(folder: str | Path) -> dict | None:
    """The validated ``runtime.json`` of an artifact folder, or None when there is none."""
    path = Path(folder) / RUNTIME_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RuntimeConfigError(f"{path}: not valid JSON ({err}); fix it or delete it "
                                 f"(`crossrank tune` writes a new one)") from err
    return validate_runtime(document, str(path))


def runtime_settings(folder: str | Path, device: str) -> dict:
    """The TUNABLE settings (those present) for ``device`` from runtime.json;
    empty when the file or its section for that device is absent."""
    document = read_runtime(folder)
    if document is None:
        return {}
    section = document.get(device) or {}
    return {k: section[k] for k in TUNABLE if k in section}


def runtime_layout(folder: str | Path, device: str) -> ServeLayout | None:
    """The served layout of runtime.json's ``device`` section (origin "runtime.json"), or None."""
    document = read_runtime(folder)
    serve = ((document or {}).get(device) or {}).get("serve")
    return None if serve is None else ServeLayout(serve["workers"], serve["threads"], RUNTIME_FILE)


def write_runtime(folder: str | Path, device: str, settings: dict, measured: dict | None = None,
                  serve: dict | None = None) -> Path:
    """Write (atomically) the ``device`` section of ``folder/runtime.json``, keeping the others;
    ``serve``: the served layout (``{"workers", "threads", "concurrency", "measured"}``)."""
    check_device(device)
    folder = Path(folder)
    path = folder / RUNTIME_FILE
    document = read_runtime(folder) or {"format": RUNTIME_FORMAT}
    section = {k: settings[k] for k in TUNABLE if k in settings}
    if measured is not None:
        section["measured"] = measured
    if serve is not None:
        section["serve"] = serve
    document[device] = section
    validate_runtime(document, str(path))
    return write_json_atomically(path, document)


def write_json_atomically(path: Path, document: dict) -> Path:
    """Write ``document`` to ``path`` atomically (crossrank.locks.write_text_atomically: a reader
    sees the old file or the new one, never a part; runtime.json, certificates.json)."""
    write_text_atomically(path, json.dumps(document, indent=2) + "\n")
    return path


__all__ = [
    "BACKENDS", "PRECISIONS", "check_backend", "check_precision", "BATCH_TOKENS_RANGE", "DEFAULT_BATCH_TOKENS", "DEFAULT_MAX_QUEUE_TOKENS", "DEVICES", "GRAPH_OPTIMIZATION",
    "MAX_ROWS", "MEMORY_ARENA", "SCHEDULER_WINDOW_BATCHES", "SPINNING", "SPINNING_MODES",
    "LAYOUT_ORIGINS", "ORIGINS", "RUNTIME_FILE", "ServeLayout", "SessionOptions", "layout_rule", "runtime_layout", "THREADS_RANGE", "check_batch_tokens", "check_device",
    "check_optimization", "check_spinning", "check_threads", "default_options", "default_settings", "physical_cores", "read_runtime",
    "runtime_settings",
    "validate_runtime", "write_json_atomically", "write_runtime",
]
