"""The one place a model session is built: the backend (ONNX Runtime, or OpenVINO on CPU), its
providers, threads, memory arena, optimisation and compute precision.

The runtime, the export's fidelity check, ``crossrank certify`` and the per-operator profiler all
build their sessions here, so what is measured is what runs. ONNX Runtime is imported here; the
OpenVINO runtime only when an OpenVINO session is asked for (crossrank.openvino_session).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

if "usearch" in sys.modules and "onnxruntime" not in sys.modules:
    # Seen with usearch 2.26 and onnxruntime 1.32 wheels: once usearch's native module is loaded,
    # onnxruntime crashes the process (SIGSEGV in libstdc++) when it builds its first session.
    # crossrank itself always loads onnxruntime first; this is about an import made before it.
    warnings.warn("usearch was imported before onnxruntime: with some wheel builds onnxruntime then "
                  "crashes the process when it loads a model. Import crossrank (or onnxruntime) before "
                  "usearch.", RuntimeWarning, stacklevel=2)

import onnxruntime as ort  # noqa: E402  (after the check above)

from crossrank.errors import DeviceUnavailableError, InvalidArgumentError, check_bool, check_choice
from crossrank import settings
from crossrank.settings import BACKENDS, MEMORY_ARENA, check_device, check_threads, physical_cores

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def require_device(device: str) -> str:
    """``device`` if its execution provider is installed; else DeviceUnavailableError saying how."""
    check_device(device)
    if device == "cuda" and not cuda_available():
        raise DeviceUnavailableError(
            "device='cuda' needs onnxruntime-gpu (CUDAExecutionProvider); available providers: "
            f"{ort.get_available_providers()}. Install with: pip uninstall -y onnxruntime && "
            "pip install 'crossrank[gpu]'")
    return device


def build_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                  memory_arena: bool = MEMORY_ARENA, optimization: str | None = None,
                  profile_prefix: str | None = None, spinning: str | None = None,
                  optimized_model_path: str | Path | None = None, backend: str = "onnxruntime",
                  precision: str | None = None):
    """A session of ``model`` (a path, or the serialised graph) for ``device`` ("cpu" or "cuda").

    backend: "onnxruntime" (an ``ort.InferenceSession``; CPU or CUDA) or "openvino" (an
    ``OpenVINOSession``, CPU only; reads a path). precision: for OpenVINO, the compute precision
    of an fp32 graph, "fp32" or "bf16" (ONNX Runtime runs the graph's own precision; anything
    else there is an error). The ONNX Runtime options below do not apply to OpenVINO (spinning,
    arena and optimisation are its own business; profiling is refused).

    threads: intra-op threads (default: physical cores). memory_arena: ONNX Runtime's CPU arena
    (see crossrank.settings.MEMORY_ARENA). optimization: graph optimisation level at load, one of
    "disable", "basic", "extended", "all" (default: crossrank.settings.GRAPH_OPTIMIZATION).
    spinning: intra-op thread spinning, one of "within-calls", "always", "never" (default:
    crossrank.settings.SPINNING). profile_prefix: write ONNX Runtime's per-operator profile to
    files starting with it (``session.end_profiling()`` returns the file). optimized_model_path:
    also save the graph as optimised at load there (to inspect what the optimiser changed).
    """
    check_choice(backend, "backend", BACKENDS)
    if backend == "openvino":
        return _build_openvino(model, device, threads, precision, profile_prefix, optimized_model_path)
    if precision not in (None, "fp32", "int8", "fp16"):
        raise InvalidArgumentError(f"precision={precision!r} needs backend='openvino': ONNX Runtime runs the "
                                   f"artifact's own precision (fp32, int8 or fp16)")
    require_device(device)
    threads = check_threads(threads)
    check_bool(memory_arena, "memory_arena")
    optimization = check_choice(settings.GRAPH_OPTIMIZATION if optimization is None else optimization,
                                "optimization", settings.GRAPH_OPTIMIZATIONS)
    spinning = check_choice(settings.SPINNING if spinning is None else spinning, "spinning", settings.SPINNING_MODES)
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "never" else "1")
    if spinning == "within-calls":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = memory_arena
    options.enable_mem_pattern = False  # shapes change every batch: patterns never repeat
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if device == "cuda":
        providers = [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}),
                     "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers)


def _build_openvino(model, device: str, threads: int | None, precision: str | None, profile_prefix,
                    optimized_model_path):
    from crossrank.openvino_session import INFERENCE_PRECISION, OpenVINOSession

    check_device(device)
    if device != "cpu":
        raise InvalidArgumentError(f"backend='openvino' runs on device='cpu', not {device!r} (use backend="
                                   f"'onnxruntime' for CUDA)")
    if isinstance(model, bytes):
        raise InvalidArgumentError("backend='openvino' reads the model from its file: pass a path")
    if profile_prefix is not None or optimized_model_path is not None:
        raise InvalidArgumentError("profile_prefix and optimized_model_path are ONNX Runtime's: use "
                                   "backend='onnxruntime' to profile or to save the optimised graph")
    precision = check_choice(precision or "fp32", "precision (OpenVINO)", tuple(INFERENCE_PRECISION) + ("int8",))
    return OpenVINOSession(model, check_threads(threads) or physical_cores(), precision)


__all__ = ["build_session", "cuda_available", "physical_cores", "require_device"]
