"""``crossrank tune``: sweep a reranker's runtime settings on this machine and write runtime.json.

``crossrank tune ART`` measures the settings that matter on the machine it runs on (backend and
precision where the CPU and the installed packages offer a choice, intra-op threads, thread
spinning, batch token budget and, on CUDA, IO binding), picks the fastest whose p95 latency for
the reference request (1 query x 20 documents) stays within the caller's budget, and writes
them to ``ART/runtime.json`` (format and precedence: crossrank.settings). ``Reranker(ART)`` then
uses them; explicit constructor arguments win.

Then the served layout: ``crossrank serve`` runs the model with workers x intra-op threads per
worker (crossrank.scheduler); at the chosen settings every split of the physical cores into
workers x threads is measured under concurrent callers (``--concurrency``, default 1 and 16, one
caller alone and a busy server), each layout as a shared Reranker driven in process by that many
closed-loop callers with 1 x 20 requests, the layouts taking turns each round. The layout with
the highest geometric mean of its pairs/s relative to the best at each concurrency is written as
runtime.json's "serve" layout (``--no-layout``: not measured, none written).

A machine too noisy to measure is refused: the default settings are measured again between parts
of the sweep, and when their spread ((max - min) / median) exceeds ``--max-spread`` nothing is
written unless ``--allow-noisy`` (the spread is printed either way and recorded in runtime.json).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from crossrank.artifact import MANIFEST, load_artifact
from crossrank.certificate import artifact_runtime, certificate_problem, read_certificates
from crossrank.errors import CrossrankError, InvalidArgumentError, RuntimeConfigError
from crossrank.front.args import (add_workload_arguments, choice_list_type, count_arg, int_list_type,
                                  positive_float_arg, positive_int_arg)
from crossrank.isa import bf16_path, cpu_flags, describe_cpu
from crossrank.front.measure import closed_loop, machine_name, measure_latency, measure_throughput
from crossrank.front.workload import load_workload, request_of_size, spread
from crossrank.openvino_session import openvino_installed
from crossrank.reranker import Reranker
from crossrank.session import require_device
from crossrank.settings import (BACKENDS, BATCH_TOKENS_RANGE, RUNTIME_FILE, SPINNING, SPINNING_MODES, THREADS_RANGE,
                                WORKERS_RANGE, SessionOptions, default_settings, layout_rule, physical_cores,
                                read_runtime, write_runtime)

DEFAULT_SWEEP_BATCH_TOKENS = (256, 512, 1024, 2048, 4096)
REFERENCE_DOCUMENTS = 20  # the reference request: one query with 20 candidates
NOISE = 0.03              # throughputs within 3% of the best are treated as equal
FINAL_CHUNK_PAIRS = 40    # final round: finalists take turns every 40 pairs (2 requests of 20)
FINALISTS = 2             # fastest settings within budget that go to the final round (plus the defaults)
DEFAULT_SWEEP_SPINNING = ("within-calls", "never")
MAX_SPREAD = 0.10         # the default settings' repeated throughputs may spread this much ((max-min)/median)
BASELINE_REPEATS = 3      # how often the default settings are measured across the sweep
DEFAULT_LAYOUT_CONCURRENCY = (1, 16)  # the served layout's default mix: one caller alone, a busy server
LAYOUT_REQUESTS_PER_CLIENT = 2        # requests per caller per round of the layout sweep


def runtimes(artifact, device: str, backends: list[str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(backend, precision) pairs to sweep for this artifact on this machine, and notes on those
    left out: ONNX Runtime at the artifact's precision; on CPU, OpenVINO when installed (the
    artifact's precision, and bf16 of an fp32 artifact where the CPU has a bf16 path and a passing
    certificate exists). ``backends`` restricts the backends."""
    backends = backends or list(BACKENDS)
    found, notes = [], []
    if "onnxruntime" in backends:
        found.append(("onnxruntime", artifact.precision))
    if "openvino" in backends:
        if device != "cpu":
            notes.append(f"openvino: CPU only, not {device}")
        elif not openvino_installed():
            notes.append("openvino: not installed (pip install 'crossrank[openvino]')")
        else:
            found.append(("openvino", artifact.precision))
            flags = cpu_flags()
            if artifact.precision == "fp32" and bf16_path(flags):
                record = read_certificates(artifact.path).get("openvino-bf16")
                problem = certificate_problem(artifact, record, "openvino", "bf16", flags)
                if problem is None:
                    found.append(("openvino", "bf16"))
                else:
                    notes.append(f"openvino bf16: {problem}")
            elif artifact.precision == "fp32":
                notes.append(f"openvino bf16: this CPU has no AVX-512 BF16 or AMX ({describe_cpu(flags)})")
    return found, notes


def settings_grid(device: str, threads: list[int] | None = None, batch_tokens: list[int] | None = None,
                  runtimes: list[tuple[str, str]] | None = None, spinning: list[str] | None = None) -> list[dict]:
    """Every combination to try: each (backend, precision) of ``runtimes`` (default: ONNX Runtime
    at fp32), threads 1..physical cores, the batch budgets, on ONNX Runtime's CPU sessions each
    spinning mode (OpenVINO and CUDA: the default; OpenVINO threads its own way), and on CUDA IO
    binding on and off (on CPU it only adds a copy, so it is not swept there)."""
    threads = threads or list(range(1, physical_cores() + 1))
    batch_tokens = batch_tokens or list(DEFAULT_SWEEP_BATCH_TOKENS)
    runtimes = runtimes or [("onnxruntime", "fp32")]
    bindings = (False, True) if device == "cuda" else (False,)
    grid = []
    for backend, precision in runtimes:
        spins = (spinning or list(DEFAULT_SWEEP_SPINNING)) if backend == "onnxruntime" and device == "cpu" \
            else [SPINNING]
        grid += [{"backend": backend, "precision": precision, "threads": t, "batch_tokens": b, "io_binding": io,
                  "spinning": spin} for t in threads for b in batch_tokens for io in bindings for spin in spins]
    return grid


@dataclass
class Trial:
    """One setting and what it measured: one sweep sample, plus the final round's samples when
    it was a finalist (``final``; then ``rate`` is their median)."""
    threads: int
    batch_tokens: int
    io_binding: bool
    backend: str = "onnxruntime"
    precision: str = "fp32"
    spinning: str = SPINNING
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
        return {"threads": self.threads, "batch_tokens": self.batch_tokens, "io_binding": self.io_binding,
                "backend": self.backend, "precision": self.precision, "spinning": self.spinning}

    @property
    def rate(self) -> float:
        return statistics.median(self.final) if self.final else self.pairs_per_s


def _reranker(path: str | Path, device: str, settings: dict) -> Reranker:
    """A Reranker with exactly ``settings`` (runtime.json is not read for them: they are all given);
    bf16 needs its passing certificate, as for any caller."""
    return Reranker(path, device=device, options=SessionOptions(**settings))


def _fresh_throughput(path: str | Path, device: str, settings: dict, pairs: list[tuple[str, str]]):
    """(Reranker, pairs/s of one bulk ``score(pairs)``) on a new Reranker after a warm-up call."""
    reranker = _reranker(path, device, settings)
    reranker.score(pairs[:8])  # warm-up: first-call allocations, thread pool start
    reranker.reset_stats()
    return reranker, measure_throughput(lambda: reranker.score(pairs), len(pairs))[0]


def measure(path: str | Path, device: str, settings: dict, pairs: list[tuple[str, str]],
            reference: tuple[str, list[str]], runs: int) -> Trial:
    """Throughput of ``score(pairs)`` (one bulk call) and latency of ``rerank(reference)``."""
    reranker, pairs_per_s = _fresh_throughput(path, device, settings, pairs)
    padding = reranker.padding_fraction
    latency = measure_latency(lambda: reranker.rerank(*reference), runs=runs, warmup=1)
    return Trial(**settings, pairs_per_s=pairs_per_s, p50_ms=latency.p50_ms, p95_ms=latency.p95_ms,
                 padding_fraction=padding)


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
    rerankers = [_reranker(path, device, trial.settings) for trial in finalists]
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
    return (f"{trial.backend} {trial.precision}, threads {trial.threads}, batch_tokens {trial.batch_tokens}"
            + (f", spinning {trial.spinning}" if trial.backend == "onnxruntime" else "")
            + (", io_binding" if trial.io_binding else ""))


def default_tune_settings(artifact, device: str) -> dict:
    """What ``Reranker(ART)`` runs with when runtime.json says nothing: the settings defaults, the
    default spinning, and the ISA rule's backend and precision."""
    choice = artifact_runtime(artifact, device, cpu_flags())
    return {**default_settings(device), "backend": choice.backend, "precision": choice.precision,
            "spinning": SPINNING}


@dataclass
class Spread:
    """The default settings' throughput measured again across the sweep (pairs/s)."""
    samples: list[float] = field(default_factory=list)

    @property
    def spread(self) -> float:
        """(max - min) / median: 0 on a quiet machine."""
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / statistics.median(self.samples)

    def text(self) -> str:
        return (f"{', '.join(f'{x:.1f}' for x in self.samples)} pairs/s "
                f"(spread {self.spread:.1%} = (max - min) / median)")


def sweep(path: str | Path, device: str, grid: list[dict], pairs: list[tuple[str, str]],
          reference: tuple[str, list[str]], runs: int,
          progress: Callable[[int, int, Trial, float], None] | None = None,
          default: dict | None = None, repeats: int = 0) -> tuple[list[Trial], Spread]:
    """``measure`` every setting of the grid; ``progress(i, n, trial, seconds)`` after each. With
    ``repeats`` >= 2 the ``default`` settings' throughput is measured that many times, spread evenly
    over the sweep (before the first setting, between parts, after the last): how noisy the
    machine is while the settings are compared."""
    trials, spread = [], Spread()
    checkpoints = [round(k * len(grid) / (repeats - 1)) for k in range(repeats)] if repeats >= 2 else []
    for i, settings in enumerate(grid + [None]):
        for _ in range(checkpoints.count(i)):  # a short grid: several repeats at one place
            spread.samples.append(_fresh_throughput(path, device, default, pairs)[1])
        if settings is None:
            break
        start = time.perf_counter()
        try:
            trial = measure(path, device, settings, pairs, reference, runs)
        except CrossrankError as err:  # e.g. a graph OpenVINO cannot run: reported, not fatal
            if progress is not None:
                progress(i + 1, len(grid), None, f"skipped {settings['backend']} {settings['precision']}: {err}")
            continue
        trial.is_default = settings == default
        trials.append(trial)
        if progress is not None:
            progress(i + 1, len(grid), trial, time.perf_counter() - start)
    return trials, spread


def precision_variants(path: str | Path) -> list[Path]:
    """Sibling artifact folders exported from the same source files as ``path`` (same kind) in
    another precision: candidates for the "precision variants present" part of the sweep."""
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
                    model_sha256: str, gain: float | None, spread: Spread | None = None) -> dict:
    """The ``measured`` block written next to the chosen settings: where they come from."""
    record = {
        "pairs_per_s": round(trial.rate, 2), "p50_1x20_ms": round(trial.p50_ms, 1),
        "p95_1x20_ms": round(trial.p95_ms, 1), "padding_fraction": round(trial.padding_fraction, 4),
        "latency_budget_ms": latency_budget_ms, "workload": workload, "pairs": pairs,
        "machine": machine_name(), "physical_cores": physical_cores(), "cpu": describe_cpu(),
        "model_sha256": model_sha256,
        "tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if trial.final:
        record["final_round_pairs_per_s"] = [round(x, 2) for x in trial.final]
    if gain is not None:
        record["gain_over_default"] = round(gain, 3)
    if spread is not None and spread.samples:
        record["baseline_pairs_per_s"] = [round(x, 2) for x in spread.samples]
        record["baseline_spread"] = round(spread.spread, 4)
    return record


# -- the served layout: workers x threads under concurrent callers ----------------------------

def layout_grid(device: str, cores: int | None = None) -> list[tuple[int, int]]:
    """(workers, threads) layouts to measure: every split of the physical cores into workers x
    threads (CPU); on CUDA only the rule's (one worker: the GPU runs one batch at a time)."""
    cores = cores or physical_cores()
    if device == "cuda":
        rule = layout_rule(cores, device)
        return [(rule.workers, rule.threads)]
    return [(cores // t, t) for t in range(1, cores + 1) if cores % t == 0 and cores // t <= WORKERS_RANGE[1]]


@dataclass
class LayoutTrial:
    """One served layout and what it measured at each concurrency: pairs/s per round and the
    latencies (ms) of every request, pooled over the rounds."""
    workers: int
    threads: int
    rates: dict[int, list[float]] = field(default_factory=dict)
    latencies: dict[int, list[float]] = field(default_factory=dict)

    def rate(self, concurrency: int) -> float:
        return statistics.median(self.rates[concurrency])

    def percentile(self, concurrency: int, q: float) -> float:
        ordered = sorted(self.latencies[concurrency])
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def text(self) -> str:
        return f"{self.workers} worker{'s' * (self.workers > 1)} x {self.threads} thread{'s' * (self.threads > 1)}"


def measure_layouts(path: str | Path, device: str, settings: dict, requests: list[tuple[str, list[str]]],
                    concurrency: list[int], rounds: int, layouts: list[tuple[int, int]],
                    progress: Callable[[str], None] | None = None) -> list[LayoutTrial]:
    """Each layout as a shared Reranker at ``settings`` (threads replaced by the layout's), driven
    by C closed-loop callers at each concurrency C with max(len(requests), 2 x C) of ``requests``
    (cycled); the layouts take turns each round, who goes first rotating, so that outside load
    lands on all of them alike."""
    models = [Reranker(path, device=device, options=SessionOptions(**{**settings, "threads": threads}),
                       shared=True, workers=workers) for workers, threads in layouts]
    trials = [LayoutTrial(workers, threads) for workers, threads in layouts]
    try:
        for model in models:
            model.rerank(*requests[0])  # warm-up: first-call allocations, thread pools
        for round_number in range(rounds):
            for c in concurrency:
                count = max(len(requests), LAYOUT_REQUESTS_PER_CLIENT * c)
                level = [requests[i % len(requests)] for i in range(count)]
                pairs = sum(len(documents) for _, documents in level)
                for j in range(len(models)):
                    i = (j + round_number) % len(models)
                    seconds, latencies = closed_loop(lambda r, m=models[i]: m.rerank(*r), level, c)
                    trials[i].rates.setdefault(c, []).append(pairs / seconds)
                    trials[i].latencies.setdefault(c, []).extend(latencies)
                    if progress is not None:
                        progress(f"  [layout round {round_number + 1}/{rounds}] {trials[i].text()}, {c} callers: "
                                 f"{pairs / seconds:.1f} pairs/s")
    finally:
        for model in models:
            model.close()
    return trials


def choose_layout(trials: list[LayoutTrial], concurrency: list[int]) -> tuple[LayoutTrial, str]:
    """The layout with the highest geometric mean, over the concurrencies, of its pairs/s (median
    over rounds) relative to the best layout's at that concurrency; layouts within NOISE of it go
    to the lowest p50 at the lowest concurrency. Returns it and a sentence saying why."""
    best = {c: max(t.rate(c) for t in trials) for c in concurrency}

    def score(trial: LayoutTrial) -> float:
        return statistics.geometric_mean([trial.rate(c) / best[c] for c in concurrency])

    top = max(score(t) for t in trials)
    close = [t for t in trials if score(t) >= top * (1 - NOISE)]
    chosen = min(close, key=lambda t: t.percentile(min(concurrency), 50))
    reason = (f"{', '.join(f'{chosen.rate(c):.1f} pairs/s at {c} callers' for c in concurrency)}: "
              f"{score(chosen):.0%} of the best layout at each concurrency (geometric mean)")
    if len(close) > 1:
        reason += (f"; {len(close)} layouts were within {NOISE:.0%} of the best, so the one with the lowest p50 at "
                   f"{min(concurrency)} callers was taken")
    return chosen, reason


def layout_record(chosen: LayoutTrial, trials: list[LayoutTrial], concurrency: list[int], rounds: int) -> dict:
    """runtime.json's "serve" layout: the chosen workers x threads and what every layout measured."""
    return {"workers": chosen.workers, "threads": chosen.threads, "concurrency": list(concurrency),
            "measured": {"rounds": rounds, "machine": machine_name(), "physical_cores": physical_cores(),
                         "tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "layouts": [{"workers": t.workers, "threads": t.threads,
                                      **{f"c{c}": {"pairs_per_s": round(t.rate(c), 2),
                                                   "p50_ms": round(t.percentile(c, 50), 1),
                                                   "p95_ms": round(t.percentile(c, 95), 1)} for c in concurrency}}
                                     for t in trials]}}


def format_layouts(trials: list[LayoutTrial], concurrency: list[int], chosen: LayoutTrial, reason: str) -> str:
    lines = ["", f"served layouts (workers x intra-op threads, shared queue, 1 x {REFERENCE_DOCUMENTS} requests from "
                 f"closed-loop callers; median pairs/s over rounds, p50/p95 pooled):",
             "  " + f"{'layout':>22}" + "".join(f" {f'c={c} pairs/s':>14} {'p50 ms':>7} {'p95 ms':>7}"
                                              for c in concurrency)]
    for t in trials:
        lines.append("  " + f"{t.text():>22}" + "".join(
            f" {t.rate(c):>14.1f} {t.percentile(c, 50):>7.0f} {t.percentile(c, 95):>7.0f}" for c in concurrency)
            + ("  CHOSEN" if t is chosen else ""))
    lines.append(f"served layout: {chosen.text()}: {reason}.")
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------

def add_tune(sub) -> None:
    p = sub.add_parser(
        "tune", help="sweep backend, precision, threads, spinning and batch budgets on this machine and write "
                     "runtime.json",
        description="Measure a reranker artifact under each setting (backend and precision: ONNX Runtime, and "
                    "OpenVINO when installed, bf16 where the CPU has AVX-512 BF16/AMX and a certificate passes; "
                    "intra-op threads 1..physical cores; thread spinning on ONNX Runtime CPU; batch token "
                    "budget; IO binding on CUDA), re-measure the fastest against the defaults "
                    "in interleaved rounds, pick the highest throughput whose p95 for the reference request "
                    "(1 query x 20 documents) is within --latency-budget-ms, and write it to "
                    "ART/runtime.json (the manifest is not touched). Reranker(ART) then uses it; explicit "
                    "arguments win. Then, at those settings, every split of the cores into served layouts (scheduler "
                    "workers x intra-op threads per worker) is measured under --concurrency closed-loop callers and "
                    "the best is written as runtime.json's \"serve\" layout, which crossrank serve (and --ray's "
                    "replicas) then use. Sibling artifacts of the same model in other precisions are measured at "
                    "the chosen settings, for comparison. The defaults are measured again across the sweep: "
                    "when their spread exceeds --max-spread the machine is too noisy to compare settings and "
                    "nothing is written (unless --allow-noisy).",
    )
    p.add_argument("artifact", metavar="ART", help="cross-encoder artifact folder")
    p.add_argument("--latency-budget-ms", type=positive_float_arg, default=None, metavar="N",
                   help="p95 limit for 1 query x 20 documents (default: none, highest throughput wins)")
    add_workload_arguments(p, 8, "scored per setting")
    p.add_argument("--threads", type=int_list_type(*THREADS_RANGE), default=None, metavar="N,N,...",
                   help="thread counts to try (default 1..physical cores)")
    p.add_argument("--batch-tokens", type=int_list_type(*BATCH_TOKENS_RANGE), default=None, metavar="N,N,...",
                   help="batch token budgets to try (default "
                        f"{','.join(map(str, DEFAULT_SWEEP_BATCH_TOKENS))})")
    p.add_argument("--backends", type=choice_list_type("backends", BACKENDS), default=None, metavar="B,B",
                   help=f"backends to try, of {','.join(BACKENDS)} (default: those installed for the device)")
    p.add_argument("--spinning", type=choice_list_type("spinning modes", SPINNING_MODES), default=None, metavar="S,S",
                   help=f"ONNX Runtime spinning modes to try, of {','.join(SPINNING_MODES)} "
                        f"(default {','.join(DEFAULT_SWEEP_SPINNING)})")
    p.add_argument("--repeat-baseline", type=positive_int_arg, default=BASELINE_REPEATS, metavar="N",
                   help=f"measure the default settings N times across the sweep for the noise check "
                        f"(default {BASELINE_REPEATS}; 1 = no check)")
    p.add_argument("--max-spread", type=positive_float_arg, default=MAX_SPREAD, metavar="F",
                   help=f"largest spread ((max - min) / median) of those repeats under which the machine counts as "
                        f"quiet enough to measure (default {MAX_SPREAD:g})")
    p.add_argument("--allow-noisy", action="store_true",
                   help="write runtime.json even when the machine measured too noisy (the spread is recorded)")
    p.add_argument("--runs", type=positive_int_arg, default=7, metavar="N",
                   help="timed 1 x 20 requests per setting for the p95 (default 7)")
    p.add_argument("--rounds", type=count_arg, default=3, metavar="N",
                   help="final rounds: the 2 fastest settings and the defaults, each on a warm Reranker, take "
                        "turns on the same pairs, N rounds; the choice and the gain use the medians (default 3; "
                        "0 = choose from the sweep's single samples, no gain figure)")
    p.add_argument("--no-variants", action="store_true", help="skip measuring other precisions of the model")
    p.add_argument("--concurrency", type=int_list_type(1, 4096), default=None, metavar="N,N,...",
                   help="concurrent callers the served layout (workers x threads per worker) is measured at, e.g. "
                        "the load you expect; several: the best over all of them (default "
                        f"{','.join(map(str, DEFAULT_LAYOUT_CONCURRENCY))}: one caller alone and a busy server)")
    p.add_argument("--no-layout", action="store_true",
                   help="skip the served layout (runtime.json then has none: crossrank serve uses its rule)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, but do not write runtime.json")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_tune)


def _tuned_artifact(args):
    """The artifact to tune, after the checks that come before any measurement."""
    artifact = load_artifact(args.artifact)
    if artifact.kind != "cross":
        raise InvalidArgumentError(f"crossrank tune tunes rerankers: {str(artifact.path)!r} is a "
                                   f"{artifact.kind!r} (embedder) artifact, which Reranker settings do not "
                                   f"apply to; measure it with `crossrank bench`")
    try:
        read_runtime(artifact.path)
    except RuntimeConfigError as err:
        raise RuntimeConfigError(f"{err} -- fix or delete {artifact.path / RUNTIME_FILE}, then tune again") from None
    require_device(args.device)
    cores = physical_cores()
    if args.threads and max(args.threads) > 4 * cores:
        raise InvalidArgumentError(f"--threads {max(args.threads)} is far above this machine's {cores} physical cores")
    return artifact


def _variants(artifact, args, at: dict, pairs, reference, say) -> list:
    """The artifact's precision variants (sibling folders) measured at the chosen settings."""
    variants = []
    for folder in precision_variants(artifact.path):
        say(f"  [variant] {folder.name}")
        own = load_artifact(folder, verify=False).precision
        try:  # ONNX Runtime at the variant's own precision, the chosen threads, budget, spinning
            trial = measure(folder, args.device, {**at, "backend": "onnxruntime", "precision": own}, pairs,
                            reference, args.runs)
        except (ValueError, RuntimeError) as err:  # a broken sibling is reported, not fatal
            say(f"    skipped: {err}")
            continue
        trial.label = f"{folder.name} ({own})"
        variants.append(trial)
    return variants


def _served_layouts(artifact, args, chosen, measured_requests, say):
    """(layouts, concurrency, chosen layout, reason): every split of the cores measured at the
    stated concurrency with the chosen settings."""
    concurrency = args.concurrency or list(DEFAULT_LAYOUT_CONCURRENCY)
    served = [(r["query"], r["documents"][:REFERENCE_DOCUMENTS]) for r in measured_requests]
    layouts = measure_layouts(artifact.path, args.device, chosen.settings, served, concurrency,
                              max(1, args.rounds), layout_grid(args.device), say)
    return (layouts, concurrency, *choose_layout(layouts, concurrency))


def _decide(artifact, args, trials: list, default: dict, pairs, reference, say):
    """(baseline, chosen or None, reason): the defaults' trial (measured now when outside the grid),
    the finalists' interleaved rounds, and the choice within the latency budget."""
    baseline = next((t for t in trials if t.is_default), None)
    if baseline is None:  # the defaults are outside the grid: measured as the baseline, not a candidate
        say(f"  [+] default settings ({', '.join(f'{k} {v}' for k, v in default.items())})")
        baseline = measure(artifact.path, args.device, default, pairs, reference, args.runs)
        baseline.is_default, baseline.candidate = True, False
        baseline.notes.append("baseline only (outside the grid)")
        trials.append(baseline)
    if args.rounds:
        finalists = within_budget(trials, args.latency_budget_ms)[:FINALISTS]
        if finalists and baseline not in finalists:
            finalists.append(baseline)
        if len(finalists) > 1:
            final_round(artifact.path, args.device, finalists, pairs, args.rounds, say)
    chosen, reason = choose(trials, args.latency_budget_ms)
    for trial in trials:
        if args.latency_budget_ms is not None and trial.p95_ms > args.latency_budget_ms:
            trial.notes.append("over budget")
    return baseline, chosen, reason


def run_tune(args) -> int:
    artifact = _tuned_artifact(args)
    cores = physical_cores()
    requests, workload_name = load_workload(args.workload)
    measured_requests = spread(requests, args.queries or None)
    pairs = [(r["query"], d) for r in measured_requests for d in r["documents"]]
    reference = request_of_size(requests, REFERENCE_DOCUMENTS)
    found, left_out = runtimes(artifact, args.device, args.backends)
    grid = settings_grid(args.device, args.threads, args.batch_tokens, found, args.spinning)
    default = default_tune_settings(artifact, args.device)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    say(f"tuning {artifact.path} ({artifact.precision}, {args.device}) on {describe_cpu()}: {len(grid)} settings x "
        f"({len(pairs)} pairs + {args.runs} x 1x{REFERENCE_DOCUMENTS} requests); {cores} physical cores")
    for note in left_out:
        say(f"  not swept: {note}")

    def progress(i, total, trial, seconds):
        if trial is None:
            say(f"  [{i}/{total}] {seconds}")
            return
        say(f"  [{i}/{total}] {describe(trial)}: {trial.pairs_per_s:.1f} pairs/s, p95 {trial.p95_ms:.0f} ms "
            f"({seconds:.0f} s)")

    trials, noise = sweep(artifact.path, args.device, grid, pairs, reference, args.runs, progress, default,
                          args.repeat_baseline)
    noisy = noise.spread > args.max_spread
    if noise.samples:
        say(f"  defaults repeated across the sweep: {noise.text()}")
    baseline, chosen, reason = _decide(artifact, args, trials, default, pairs, reference, say)
    variants = [] if args.no_variants else _variants(artifact, args, chosen.settings if chosen else default,
                                                      pairs, reference, say)
    layout = None if chosen is None or args.no_layout else _served_layouts(artifact, args, chosen,
                                                                           measured_requests, say)
    gain = None
    if chosen is baseline:
        gain = 1.0
    elif chosen is not None and chosen.final and baseline.final:
        gain = chosen.rate / baseline.rate
    print(format_tune(artifact, args, trials, variants, chosen, baseline, reason, gain, workload_name, len(pairs)))
    if layout is not None:
        print(format_layouts(*layout))
    if noise.samples:
        print(f"\nnoise check: the defaults measured {len(noise.samples)} times across the sweep: {noise.text()}; "
              f"limit {args.max_spread:.0%}")
    if noisy:
        print(f"\nWARNING: THIS MACHINE IS TOO NOISY TO MEASURE: the same settings spread {noise.spread:.0%} "
              f"(> {args.max_spread:.0%}) during the sweep, so differences between settings are not "
              f"trustworthy. Stop other work on the machine and tune again"
              + (", or pass --allow-noisy." if not args.allow_noisy else "; --allow-noisy: writing anyway."),
              file=sys.stderr)
        if not args.allow_noisy and not args.dry_run:
            print("\nruntime.json not written: the machine was too noisy to measure", file=sys.stderr)
            return 1
    if chosen is None:
        print(f"\nruntime.json not written: {reason}. Raise --latency-budget-ms, or use a faster "
              f"precision variant.", file=sys.stderr)
        return 1
    if args.dry_run:
        print("\n--dry-run: runtime.json not written")
        return 0
    serve = None
    if layout is not None:
        layouts, concurrency, chosen_layout, _ = layout
        serve = layout_record(chosen_layout, layouts, concurrency, max(1, args.rounds))
    path = write_runtime(artifact.path, args.device, chosen.settings,
                         measured_record(chosen, args.latency_budget_ms, workload_name, len(pairs),
                                         artifact.sha256, gain, noise), serve)
    print(f"\nwrote {path}: Reranker({str(artifact.path)!r}, device={args.device!r}) now uses "
          f"{describe(chosen)} (explicit arguments still win)"
          + (f"; crossrank serve runs it with {chosen_layout.text()} (--workers/--threads still win)"
             if serve is not None else ""))
    return 0


def format_tune(artifact, args, trials, variants, chosen, baseline, reason, gain, workload, n_pairs) -> str:

    budget = args.latency_budget_ms
    lines = [f"crossrank tune {artifact.path} ({artifact.precision}, {args.device}); workload: {workload}, "
             f"{n_pairs} pairs per setting; reference request 1 x 20, {args.runs} runs"
             + (f"; p95 budget {budget:g} ms" if budget is not None else "; no latency budget"), "",
             f"  {'backend':>11} {'precision':>9} {'threads':>7} {'batch_tokens':>12} {'spinning':>12} "
             f"{'io_binding':>10} {'pairs/s':>8} {'final':>6} {'p50 ms':>7} {'p95 ms':>7} {'padding':>7}  note"]

    def row(t, label=""):
        notes = list(t.notes)
        if t.is_default:
            notes.insert(0, "default")
        if chosen is not None and t is chosen:
            notes.insert(0, "CHOSEN")
        if label:
            notes.insert(0, label)
        final = f"{t.rate:.1f}" if t.final else "-"
        spinning = t.spinning if t.backend == "onnxruntime" else "-"
        return (f"  {t.backend:>11} {t.precision:>9} {t.threads:>7} {t.batch_tokens:>12} {spinning:>12} "
                f"{'on' if t.io_binding else 'off':>10} "
                f"{t.pairs_per_s:>8.1f} {final:>6} {t.p50_ms:>7.0f} {t.p95_ms:>7.0f} {t.padding_fraction:>7.1%}  "
                + ", ".join(notes))

    lines += [row(t) for t in trials]
    lines.append("  (pairs/s: one sweep sample; final: median over the final rounds, where the finalists "
                 "take turns on the same pairs)")
    if variants:
        lines += ["", "  other precisions of the same model, at the chosen settings (advisory: runtime.json "
                      "covers this artifact only):"]
        lines += [row(t, t.label) for t in variants]
    lines += ["", f"chosen: {describe(chosen)}: {reason}." if chosen is not None else f"no choice: {reason}."]
    if gain is not None:
        if chosen is baseline:
            lines.append("the chosen settings are the defaults: gain 1.00x")
        else:
            d = ", ".join(f"{x:.1f}" for x in baseline.final)
            t = ", ".join(f"{x:.1f}" for x in chosen.final)
            lines.append(f"gain over the defaults ({describe(baseline)}): {gain:.2f}x throughput "
                         f"(final rounds, taking turns: defaults {d} pairs/s; chosen {t} pairs/s)")
    if chosen is not None and variants:
        best = max(variants, key=lambda v: v.pairs_per_s)
        if best.pairs_per_s > chosen.pairs_per_s * 1.05 and (budget is None or best.p95_ms <= budget):
            lines.append(f"note: {best.label} is {best.pairs_per_s / chosen.pairs_per_s:.2f}x faster at these "
                         f"settings; point Reranker at it (and tune it) if its fidelity suits you.")
    return "\n".join(lines)


__all__ = [
    "LayoutTrial", "Trial", "add_tune", "choose", "choose_layout", "describe", "layout_grid", "measure_layouts", "final_round", "measure", "measured_record", "precision_variants",
    "run_tune", "settings_grid", "sweep", "within_budget",
]
