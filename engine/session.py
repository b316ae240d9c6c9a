"""The one place an ONNX Runtime session is built: providers, threads, memory arena."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

DEVICES = ("cpu", "cuda")


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


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def build_session(model_path: str | Path, device: str = "cpu", threads: int | None = None,
                  memory_arena: bool = False) -> ort.InferenceSession:
    """An InferenceSession for ``device`` ("cpu" or "cuda").

    threads: intra-op threads; default = physical cores. memory_arena: ONNX Runtime's CPU arena
    keeps the largest buffers it ever served, so with requests of varying shapes RSS only grows;
    off by default (measured cost: see benchmarks), on for fixed-shape workloads.
    """
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = memory_arena
    options.enable_mem_pattern = False  # shapes change every batch: patterns never repeat
    options.log_severity_level = 3
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError(
                "device='cuda' needs onnxruntime-gpu (CUDAExecutionProvider); available providers: "
                f"{ort.get_available_providers()}. Install with: pip uninstall -y onnxruntime && "
                "pip install 'crossrank[gpu]'"
            )
        providers = [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}),
                     "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(model_path), options, providers=providers)
