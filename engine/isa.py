"""What this CPU can compute fast, read from /proc/cpuinfo, and the rule that picks a model's
default backend and precision from it.

The rule (``preferred``, a pure function of the CPU's flag set; measured figures in docs/api.md):

    AMX (amx_tile + amx_bf16)       -> OpenVINO, bf16   (the fp32 artifact computed in bf16)
    AVX-512 BF16 (avx512_bf16)      -> OpenVINO, bf16
    AVX-512 VNNI, or AVX2 only      -> ONNX Runtime, the artifact's own precision (int8 for an
                                       int8 artifact, as before)

``default_runtime`` then applies it to one artifact: bf16 is the default only for an fp32
artifact, with the openvino package installed and a passing bf16 certificate made for this
artifact on this kind of CPU (crossrank.certificate); otherwise ONNX Runtime runs the artifact's
own precision, and the reason says which condition failed.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import NamedTuple

CPUINFO = Path("/proc/cpuinfo")
# The flags the rule and the reports read (Linux /proc/cpuinfo spellings).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
AMX_BF16 = frozenset({"amx_tile", "amx_bf16"})
AVX512_BF16 = "avx512_bf16"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo text."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@functools.lru_cache(maxsize=1)
def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: no flags known, so only the portable path (ONNX Runtime) is chosen
        return platform.processor() or platform.machine(), frozenset()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is unreadable)."""
    return _read_cpuinfo()[1]


def cpu_model() -> str:
    return _read_cpuinfo()[0] or "unknown CPU"


def isa_flags(flags: frozenset[str] | set[str] | None = None) -> list[str]:
    """The ISA_FLAGS present (this CPU's by default), in ISA_FLAGS order."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in ISA_FLAGS if f in flags]


def bf16_path(flags: frozenset[str] | set[str] | None = None) -> str | None:
    """How this CPU computes bf16 matrix products: "amx", "avx512_bf16", or None (not natively)."""
    flags = cpu_flags() if flags is None else flags
    if AMX_BF16 <= flags:
        return "amx"
    if AVX512_BF16 in flags:
        return "avx512_bf16"
    return None


def missing_bf16_flags(flags: frozenset[str] | set[str] | None = None) -> list[str]:
    """The flags of which one is needed for bf16 (empty when the CPU has a bf16 path)."""
    flags = cpu_flags() if flags is None else flags
    return [] if bf16_path(flags) else sorted({AVX512_BF16, *AMX_BF16} - set(flags))


def describe_cpu(flags: frozenset[str] | set[str] | None = None, model: str | None = None) -> str:
    """One line for reports: model and ISA flags, e.g. "AMD EPYC; ISA: avx2 (no AVX-512, no AMX)"."""
    present = isa_flags(flags)
    text = f"{model or cpu_model()}; ISA: {' '.join(present) or 'none of ' + ' '.join(ISA_FLAGS)}"
    absent = [name for name, flag in (("AVX-512", "avx512f"), ("AVX-512 BF16", AVX512_BF16), ("AMX", "amx_tile"))
              if flag not in present]
    return text + (f" (no {', no '.join(absent)})" if absent else "")


class Preference(NamedTuple):
    backend: str     # "onnxruntime" or "openvino"
    precision: str   # "bf16", or "artifact": the artifact's own precision
    reason: str


def preferred(flags: frozenset[str] | set[str]) -> Preference:
    """The rule of the module docstring, over a CPU flag set."""
    path = bf16_path(flags)
    if path == "amx":
        return Preference("openvino", "bf16", "AMX: OpenVINO runs the fp32 graph in bf16 on the AMX tiles")
    if path == "avx512_bf16":
        return Preference("openvino", "bf16", "AVX-512 BF16: OpenVINO runs the fp32 graph in bf16")
    if "avx512_vnni" in flags:
        return Preference("onnxruntime", "artifact", "AVX-512 VNNI without BF16: ONNX Runtime, the artifact's "
                                                     "precision (int8 artifacts use VNNI dot products)")
    return Preference("onnxruntime", "artifact", "no AVX-512 BF16/AMX: ONNX Runtime, the artifact's precision "
                                                 "(on AVX2 its int8 was measured fastest)")


class RuntimeChoice(NamedTuple):
    backend: str
    precision: str   # concrete: fp32, int8, fp16 or bf16
    reason: str


def default_runtime(flags: frozenset[str] | set[str], artifact_precision: str, device: str = "cpu", *,
                    openvino_installed: bool, bf16_certified: bool) -> RuntimeChoice:
    """The default backend and precision for an artifact of ``artifact_precision`` on a CPU with
    ``flags`` (a pure function: the caller says what is installed and certified)."""
    if device != "cpu":
        return RuntimeChoice("onnxruntime", artifact_precision, f"device {device!r}: ONNX Runtime")
    rule = preferred(flags)
    if rule.precision != "bf16":
        return RuntimeChoice(rule.backend, artifact_precision, rule.reason)
    missing = [why for why, ok in ((f"the artifact is {artifact_precision}, bf16 runs an fp32 artifact",
                                    artifact_precision == "fp32"),
                                   ("the openvino package is not installed (pip install 'crossrank[openvino]')",
                                    openvino_installed),
                                   ("no passing bf16 certificate for this artifact on this CPU (crossrank certify)",
                                    bf16_certified)) if not ok]
    if missing:
        return RuntimeChoice("onnxruntime", artifact_precision, f"{rule.reason}, but {'; '.join(missing)}: "
                                                                 f"ONNX Runtime, {artifact_precision}")
    return RuntimeChoice("openvino", "bf16", rule.reason)


__all__ = ["ISA_FLAGS", "Preference", "RuntimeChoice", "bf16_path", "cpu_flags", "cpu_model", "default_runtime",
           "describe_cpu", "isa_flags", "missing_bf16_flags", "parse_cpuinfo", "preferred"]
