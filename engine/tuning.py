"""Per-machine runtime settings: ``runtime.json`` in an artifact folder, and the sweep that writes it.

``crossrank tune ART`` measures the settings that matter on the machine it runs on (intra-op
threads, batch token budget and, on CUDA, IO binding), picks the fastest whose p95 latency for
the reference request (1 query x 20 documents) stays within the caller's budget, and writes
them to ``ART/runtime.json``. ``Reranker(ART)`` then uses them; explicit constructor arguments
win. ``runtime.json`` is not listed in the manifest (it is per machine, not part of the model):
loading checks the manifest's files only, and ``tune`` never touches the manifest.

Format (one section per device; a section's keys are all optional)::

    {"format": 1,
     "cpu": {"threads": 2, "batch_tokens": 4096, "io_binding": false,
             "measured": {... what tune measured, free-form ...}}}

A malformed file is an error naming the file and the bad key or value, never silently ignored.

This module is imported by the runtime (``Reranker`` reads the file), so it imports only the
standard library at module level; the sweep imports the engine lazily.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from crossrank.datasets import load_trec_rag, read_jsonl

RUNTIME_FILE = "runtime.json"
RUNTIME_FORMAT = 1
RUNTIME_DEVICES = ("cpu", "cuda")
THREADS_RANGE = (1, 1024)
BATCH_TOKENS_RANGE = (16, 1 << 22)
DEFAULT_SWEEP_BATCH_TOKENS = (1024, 2048, 4096, 8192)
REFERENCE_DOCUMENTS = 20  # the reference request: one query with 20 candidates
NOISE = 0.03              # throughputs within 3% of the best are treated as equal
FINAL_CHUNK_PAIRS = 40    # final round: finalists take turns every 40 pairs (2 requests of 20)


class RuntimeConfigError(ValueError):
    """``runtime.json`` is malformed: the message names the file and the bad key or value."""


# -- runtime.json: read, validate, write ---------------------------------------------------

def _check_int(where: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuntimeConfigError(f"{where}: {key!r} must be an integer, got {value!r:.60}")
    if not low <= value <= high:
        raise RuntimeConfigError(f"{where}: {key!r} = {value} is out of range [{low}, {high}]")
    return value


def _check_section(where: str, device: str, section: Any) -> dict:
    if not isinstance(section, dict):
        raise RuntimeConfigError(f"{where}: {device!r} must be an object of settings, got {section!r:.60}")
    for key, value in section.items():
        name = f"{device}.{key}"
        if key == "threads":
            _check_int(where, name, value, *THREADS_RANGE)
        elif key == "batch_tokens":
            _check_int(where, name, value, *BATCH_TOKENS_RANGE)
        elif key == "io_binding":
            if not isinstance(value, bool):
                raise RuntimeConfigError(f"{where}: {name!r} must be true or false, got {value!r:.60}")
        elif key == "measured":
            if not isinstance(value, dict):
                raise RuntimeConfigError(f"{where}: {name!r} must be an object, got {value!r:.60}")
        else:
            raise RuntimeConfigError(
                f"{where}: unknown key {name!r}; a device section holds threads, batch_tokens, "
                f"io_binding and measured"
            )
    return section


def validate_runtime(document: Any, where: str = RUNTIME_FILE) -> dict:
    """Check a parsed runtime.json; returns it unchanged or raises RuntimeConfigError."""
    if not isinstance(document, dict):
        raise RuntimeConfigError(f"{where}: expected a JSON object, got {type(document).__name__}")
    if "format" not in document:
        raise RuntimeConfigError(f"{where}: lacks the key 'format' (this crossrank writes {RUNTIME_FORMAT})")
    if document["format"] != RUNTIME_FORMAT:
        raise RuntimeConfigError(
            f"{where}: 'format' = {document['format']!r} is not {RUNTIME_FORMAT}: run `crossrank tune` again"
        )
    for key, value in document.items():
        if key == "format":
            continue
        if key not in RUNTIME_DEVICES:
            raise RuntimeConfigError(
                f"{where}: unknown key {key!r}; runtime.json holds 'format' and one section per "
                f"device {RUNTIME_DEVICES}"
            )
        _check_section(where, key, value)
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
    """``{threads, batch_tokens, io_binding}`` (those present) for ``device`` from runtime.json;
    empty when the file or its section for that device is absent."""
    document = read_runtime(folder)
    if document is None:
        return {}
    section = document.get(device) or {}
    return {k: section[k] for k in ("threads", "batch_tokens", "io_binding") if k in section}


def write_runtime(folder: str | Path, device: str, settings: dict, measured: dict | None = None) -> Path:
    """Write (atomically) the ``device`` section of ``folder/runtime.json``, keeping the others."""
    if device not in RUNTIME_DEVICES:
        raise ValueError(f"device {device!r} is not one of {RUNTIME_DEVICES}")
    folder = Path(folder)
    path = folder / RUNTIME_FILE
    document = read_runtime(folder) or {"format": RUNTIME_FORMAT}
    section = {k: settings[k] for k in ("threads", "batch_tokens", "io_binding") if k in settings}
    if measured is not None:
        section["measured"] = measured
    document[device] = section
    validate_runtime(document, str(path))
    handle, tmp = tempfile.mkstemp(prefix=".runtime-", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(document, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- workloads ------------------------------------------------------------------------------

def read_workload(path: str | Path) -> list[dict]:
    """Requests ``{"query": str, "documents": [str, ...]}``, one JSON object per line (.jsonl,
    optionally .gz). Blank lines are skipped; a bad line is an error naming file and line."""
    requests = []
    for where, _, row in read_jsonl(path, "workload file", ("query", "documents")):
        query, documents = row["query"], row["documents"]
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f'{where}: "query" must be a non-empty string, got {query!r:.60}')
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            raise ValueError(f'{where}: "documents" must be a non-empty list of strings')
        requests.append({"query": query, "documents": documents})
    if not requests:
        raise ValueError(f"workload file {str(path)!r} holds no requests")
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


# -- the sweep ------------------------------------------------------------------------------

def machine_name() -> str:
    """CPU model and physical cores, e.g. "AMD EPYC 7R13 Processor, 2 physical cores"."""
    from crossrank.session import physical_cores

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {physical_cores()} physical cores"


def default_settings(device: str) -> dict:
    """What ``Reranker(path, device)`` uses without runtime.json and without arguments."""
    from crossrank.batching import DEFAULT_BATCH_TOKENS
    from crossrank.session import physical_cores

    return {"threads": physical_cores(), "batch_tokens": DEFAULT_BATCH_TOKENS[device],
            "io_binding": device == "cuda"}


def settings_grid(device: str, threads: list[int] | None = None,
                  batch_tokens: list[int] | None = None) -> list[dict]:
    """Every combination to try: threads 1..physical cores, the batch budgets, and on CUDA IO
    binding on and off (on CPU it only adds a copy, so it is not swept there)."""
    from crossrank.session import physical_cores

    threads = threads or list(range(1, physical_cores() + 1))
    batch_tokens = batch_tokens or list(DEFAULT_SWEEP_BATCH_TOKENS)
    bindings = (False, True) if device == "cuda" else (False,)
    return [{"threads": t, "batch_tokens": b, "io_binding": io}
            for t in threads for b in batch_tokens for io in bindings]


@dataclass
class Trial:
    """One setting and what it measured: one sweep sample, plus the final round's samples when
    it was a finalist (``final``; then ``rate`` is their median)."""

    threads: int
    batch_tokens: int
    io_binding: bool
    pairs_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    padding_fraction: float = 0.0
    is_default: bool = False
    candidate: bool = True   # False: measured as the baseline only (outside the grid)
    label: str = ""          # e.g. a precision variant's folder
    final: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> dict:
        return {"threads": self.threads, "batch_tokens": self.batch_tokens, "io_binding": self.io_binding}

    @property
    def rate(self) -> float:
        return statistics.median(self.final) if self.final else self.pairs_per_s


def _fresh_throughput(path: str | Path, device: str, settings: dict, pairs: list[tuple[str, str]]):
    """(Reranker, pairs/s of one bulk ``score(pairs)``) on a new Reranker after a warm-up call."""
    from crossrank.bench import measure_throughput
    from crossrank.reranker import Reranker
    from crossrank.runner import RunStats

    reranker = Reranker(path, device=device, **settings)
    reranker.score(pairs[:8])  # warm-up: first-call allocations, thread pool start
    reranker.runner.stats = RunStats()
    return reranker, measure_throughput(lambda: reranker.score(pairs), len(pairs))[0]


def measure(path: str | Path, device: str, settings: dict, pairs: list[tuple[str, str]],
            reference: tuple[str, list[str]], runs: int) -> Trial:
    """Throughput of ``score(pairs)`` (one bulk call) and latency of ``rerank(reference)``."""
    from crossrank.bench import measure_latency

    reranker, pairs_per_s = _fresh_throughput(path, device, settings, pairs)
    padding = reranker.padding_fraction
    latency = measure_latency(lambda: reranker.rerank(*reference), runs=runs, warmup=1)
    return Trial(settings["threads"], settings["batch_tokens"], settings["io_binding"], pairs_per_s,
                 latency.p50_ms, latency.p95_ms, padding)


def within_budget(trials: list[Trial], latency_budget_ms: float | None) -> list[Trial]:
    """Candidate trials whose p95 for the reference request meets the budget, fastest first."""
    ok = [t for t in trials if t.candidate and (latency_budget_ms is None or t.p95_ms <= latency_budget_ms)]
    return sorted(ok, key=lambda t: -t.pairs_per_s)


def final_round(path: str | Path, device: str, finalists: list[Trial], pairs: list[tuple[str, str]],
                rounds: int, progress: Callable[[str], None] | None = None,
                chunk_pairs: int = FINAL_CHUNK_PAIRS) -> None:
    """Re-measure the finalists' throughput into ``trial.final`` (one pairs/s per round).

    A sweep sample per setting is at the mercy of whatever else the machine does during those
    seconds. Here every finalist keeps one warm Reranker and they take turns on each chunk of
    ``chunk_pairs`` pairs (who goes first rotates), so a burst of outside load lands on all of
    them alike; a round's rate is all its pairs over the summed time of its turns.
    """
    from crossrank.reranker import Reranker

    rerankers = [Reranker(path, device=device, **trial.settings) for trial in finalists]
    for reranker in rerankers:
        reranker.score(pairs[:8])
    chunks = [pairs[i:i + chunk_pairs] for i in range(0, len(pairs), chunk_pairs)]
    for round_number in range(1, rounds + 1):
        if progress is not None:
            progress(f"  final round {round_number}/{rounds}: {len(finalists)} settings taking turns "
                     f"every {chunk_pairs} pairs")
        seconds = [0.0] * len(finalists)
        for k, chunk in enumerate(chunks):
            for j in range(len(finalists)):
                i = (j + k) % len(finalists)
                start = time.perf_counter()
                rerankers[i].score(chunk)
                seconds[i] += time.perf_counter() - start
        for trial, spent in zip(finalists, seconds):
            trial.final.append(len(pairs) / spent)


def choose(trials: list[Trial], latency_budget_ms: float | None) -> tuple[Trial | None, str]:
    """The fastest candidate whose p95 is within the budget, by the final round's medians when
    there was one (ties within measurement noise go to the lower p95), and a sentence saying
    why. None when no candidate meets the budget."""
    within = within_budget(trials, latency_budget_ms)
    if not within:
        pool = [t for t in trials if t.candidate] or trials
        best = min(pool, key=lambda t: t.p95_ms)
        return None, (f"no setting meets the {latency_budget_ms:g} ms p95 budget for 1 x "
                      f"{REFERENCE_DOCUMENTS}: the lowest p95 was {best.p95_ms:.0f} ms ({describe(best)})")
    finalists = [t for t in within if t.final]
    pool = finalists or within
    fastest = max(pool, key=lambda t: t.rate)
    close = [t for t in pool if t.rate >= fastest.rate * (1 - NOISE)]
    chosen = min(close, key=lambda t: t.p95_ms)
    excluded = sum(t.candidate for t in trials) - len(within)
    basis = (f"median of {len(fastest.final)} final rounds, {len(finalists)} finalists taking turns"
             if finalists else "one sample per setting")
    reason = (f"highest throughput ({fastest.rate:.1f} pairs/s, {basis})"
              + (f" among the {len(within)} settings whose p95 for 1 x {REFERENCE_DOCUMENTS} is within "
                 f"{latency_budget_ms:g} ms ({excluded} over budget)" if latency_budget_ms is not None
                 else "; no latency budget given"))
    if chosen is not fastest:
        reason += (f"; {len(close)} settings were within {NOISE:.0%} of it (measurement noise), "
                   f"so the one with the lowest p95 ({chosen.p95_ms:.0f} ms) was taken")
    return chosen, reason


def describe(trial: Trial) -> str:
    return (f"threads {trial.threads}, batch_tokens {trial.batch_tokens}"
            + (", io_binding" if trial.io_binding else ""))


def sweep(path: str | Path, device: str, grid: list[dict], pairs: list[tuple[str, str]],
          reference: tuple[str, list[str]], runs: int,
          progress: Callable[[int, int, Trial, float], None] | None = None) -> list[Trial]:
    """``measure`` every setting of the grid; ``progress(i, n, trial, seconds)`` after each."""
    default = default_settings(device)
    trials = []
    for i, settings in enumerate(grid, start=1):
        start = time.perf_counter()
        trial = measure(path, device, settings, pairs, reference, runs)
        trial.is_default = settings == default
        trials.append(trial)
        if progress is not None:
            progress(i, len(grid), trial, time.perf_counter() - start)
    return trials


def precision_variants(path: str | Path) -> list[Path]:
    """Sibling artifact folders exported from the same source files as ``path`` (same kind) in
    another precision: candidates for the "precision variants present" part of the sweep."""
    from crossrank.artifact import MANIFEST

    folder = Path(path).resolve()
    try:
        own = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    source = (own.get("source") or {}).get("files")
    found = []
    for sibling in sorted(folder.parent.iterdir()):
        if sibling == folder or not (sibling / MANIFEST).is_file():
            continue
        try:
            other = json.loads((sibling / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (source and other.get("kind") == own.get("kind") and other.get("precision") != own.get("precision")
                and (other.get("source") or {}).get("files") == source):
            found.append(sibling)
    return found


def measured_record(trial: Trial, latency_budget_ms: float | None, workload: str, pairs: int,
                    model_sha256: str, gain: float | None) -> dict:
    """The ``measured`` block written next to the chosen settings: where they come from."""
    from crossrank.session import physical_cores

    record = {
        "pairs_per_s": round(trial.rate, 2), "p50_1x20_ms": round(trial.p50_ms, 1),
        "p95_1x20_ms": round(trial.p95_ms, 1), "padding_fraction": round(trial.padding_fraction, 4),
        "latency_budget_ms": latency_budget_ms, "workload": workload, "pairs": pairs,
        "machine": machine_name(), "physical_cores": physical_cores(), "model_sha256": model_sha256,
        "tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if trial.final:
        record["final_round_pairs_per_s"] = [round(x, 2) for x in trial.final]
    if gain is not None:
        record["gain_over_default"] = round(gain, 3)
    return record


__all__ = [
    "RUNTIME_FILE", "RuntimeConfigError", "Trial", "choose", "default_settings", "describe", "final_round",
    "machine_name",
    "load_workload", "measure", "measured_record", "precision_variants", "read_runtime", "read_workload",
    "request_of_size", "runtime_settings", "settings_grid", "spread", "sweep", "validate_runtime",
    "within_budget", "write_runtime",
]
