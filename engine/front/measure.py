"""Measurement helpers shared by ``make bench`` and ``crossrank bench``: throughput, latency,
padding, useful GFLOP/s against this machine's GEMM rate, RSS, cold start.

No torch here; peers (sentence-transformers) are imported only by the callers that run them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from crossrank.isa import cpu_model, isa_flags
from crossrank.settings import physical_cores


def machine_name() -> str:
    """CPU model, physical cores and ISA flags, e.g. "AMD EPYC 7R13 Processor, 2 physical cores, ISA avx2"."""
    return f"{cpu_model()}, {physical_cores()} physical cores, ISA {' '.join(isa_flags()) or '-'}"


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GEMM rate of numpy on this machine (GFLOP/s), the yardstick for model work."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def encoder_flops(lengths: np.ndarray, layers: int, hidden: int, intermediate: int) -> float:
    """Useful FLOPs of a BERT encoder over sequences of the given real lengths (no padding):
    per token 2*(4*h*h + 2*h*i) per layer for the projections and FFN, plus 4*L*h per token per
    layer for attention scores and weighted sums."""
    lengths = np.asarray(lengths, dtype=np.float64)
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * intermediate) * layers
    attention = 4 * hidden * layers * (lengths ** 2).sum()
    return float(per_token * lengths.sum() + attention)


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


@dataclass
class Latency:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    runs: int


def measure_latency(call: Callable[[], object], runs: int, warmup: int = 1) -> Latency:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return Latency(float(p50), float(p95), float(p99), runs)


def measure_throughput(call: Callable[[], object], items: int) -> tuple[float, float]:
    """(items per second, seconds) of one call that processes ``items``."""
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    return items / seconds, seconds


def closed_loop(call: Callable[[object], object], requests: list, concurrency: int) -> tuple[float, list[float]]:
    """``concurrency`` threads each calling ``call(request)`` on the next request as soon as their
    last one returns (closed loop) until ``requests`` are done: (seconds, latencies in ms)."""
    pending, latencies, lock = list(reversed(requests)), [], threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while not errors:
            with lock:
                if not pending:
                    return
                request = pending.pop()
            start = time.perf_counter()
            try:
                call(request)
            except BaseException as err:  # re-raised on the caller's thread
                errors.append(err)
                return
            with lock:
                latencies.append((time.perf_counter() - start) * 1e3)

    clients = [threading.Thread(target=client, name=f"crossrank-client-{i}") for i in range(concurrency)]
    start = time.perf_counter()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start, latencies


def cold_start_seconds(artifact: str, device: str = "cpu", kind: str = "cross", backend: str | None = None) -> float:
    """Wall time from a fresh Python process's start to its first result (rerank or embed)."""
    if kind == "cross":
        call = "crossrank.Reranker(%r, device=%r, backend=%r).rerank('what is a cross-encoder', " \
               "['A cross-encoder reads query and passage together.'])"
    else:
        call = "crossrank.Embedder(%r, device=%r, backend=%r).embed(['what is a bi-encoder'])"
    code = "import crossrank; " + call % (str(artifact), device, backend)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start
