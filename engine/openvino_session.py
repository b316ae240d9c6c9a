"""An artifact's ONNX graph compiled by the OpenVINO runtime (CPU), behind the small part of the
ONNX Runtime session interface crossrank uses: ``get_inputs()``, ``get_outputs()`` (``.name``,
``.shape``) and ``run(output_names, feeds)``.

Built only by ``crossrank.session.build_session(..., backend="openvino")``; ``openvino`` is
imported when the first such session is built, never by ``import crossrank``.

Shapes: the graph keeps its dynamic batch and sequence axes; the CPU plugin compiles once and
specialises kernels per input shape on first sight, keeping them in its runtime cache (so the
first batch of a new shape costs more than the next: benchmarks/backend_shapes.py measures it).
Threads: each calling thread gets its own infer request (an infer request is not thread-safe; the
compiled model is), so the shared scheduler's workers run side by side.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from crossrank.errors import ArtifactError, MissingExtraError

# OpenVINO's element types for the precisions crossrank asks of it.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class NodeInfo(NamedTuple):
    """What ``get_inputs()``/``get_outputs()`` return: a name and a shape (str for a dynamic axis)."""

    name: str
    shape: list


def openvino_installed() -> bool:
    """Whether the openvino package can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_version() -> str | None:
    """The installed openvino package's version, or None when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("openvino")
    except PackageNotFoundError:
        return None


def _import_openvino():
    try:
        import openvino
    except ImportError as err:
        raise MissingExtraError(f"backend='openvino' needs the 'openvino' extra: pip install 'crossrank[openvino]' "
                                f"({err})") from None
    return openvino


def _shape(partial_shape) -> list:
    return [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(partial_shape)]


class OpenVINOSession:
    """The graph at ``model_path`` compiled for the CPU with ``threads`` inference threads and
    ``precision`` ("fp32" or "bf16": OpenVINO's INFERENCE_PRECISION_HINT; an int8 artifact runs at
    its own precision, "fp32" hint for the rest of its graph)."""

    def __init__(self, model_path: str | Path, threads: int, precision: str = "fp32"):
        ov = _import_openvino()
        hint = INFERENCE_PRECISION.get(precision, "f32")
        self.config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": int(threads),
                       "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        core = ov.Core()
        self._local = threading.local()
        try:
            self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", self.config)
            self._inputs = [NodeInfo(port.get_any_name(), _shape(port.get_partial_shape()))
                            for port in self.compiled.inputs]
            self._outputs = [NodeInfo(port.get_any_name(), _shape(port.get_partial_shape()))
                             for port in self.compiled.outputs]
            # Some graphs compile but fail at their first inference (a dynamic shape the plugin
            # cannot infer, e.g. the per-row int8 recipe's FakeQuantize): try one small batch here.
            # Others return nothing, silently (the per-row int8 graph with one thread): check the rows.
            probe = self.run(None, {node.name: np.zeros((2, 8), dtype=np.int64) for node in self._inputs})
            if any(out.shape[:1] != (2,) for out in probe):
                raise RuntimeError(f"its outputs for a batch of 2 rows have shapes {[out.shape for out in probe]}")
        except RuntimeError as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            detail = (lines[-1] if lines else type(err).__name__)[:300].rstrip('.')
            raise ArtifactError(f"OpenVINO cannot run {str(model_path)!r} ({precision}): {detail}. Run this "
                                f"artifact with backend='onnxruntime', or give OpenVINO the fp32 artifact of the "
                                f"same model") from None
        # what OpenVINO computes in ("f32", "bf16"): on a CPU without bf16 it runs f32 whatever the hint
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def get_inputs(self) -> list[NodeInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeInfo]:
        return list(self._outputs)

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, output_names, feeds: dict) -> list:
        """The outputs named (all when None) for ``feeds`` (name -> numpy array), as numpy arrays
        of their own (the request's output buffers are reused by its next call)."""
        request = self._request()
        request.infer(feeds)
        names = [o.name for o in self._outputs] if output_names is None else output_names
        return [request.get_tensor(name).data.copy() for name in names]


__all__ = ["INFERENCE_PRECISION", "NodeInfo", "OpenVINOSession", "openvino_installed", "openvino_version"]
