"""Fidelity certificates: a precision or backend other than the one the export measured, checked
against the PyTorch reference on this machine, and the load-time rules that use them.

An artifact's own precision (fp32, int8, fp16) on ONNX Runtime is certified by its manifest (the
export measured it). Anything else is measured by ``crossrank certify ART SRC --backend B
--precision P`` (export side: it runs PyTorch; the runtime never does) on the export's fidelity
set, and recorded in ``ART/certificates.json`` beside the artifact (not in the manifest: it is per
machine, like runtime.json)::

    {"format": 1,
     "openvino-bf16": {"artifact_sha256": "...", "kind": "cross", "backend": "openvino",
                       "precision": "bf16", "figures": {... measure_fidelity's ...},
                       "bar": {"metric": "spearman", "op": ">=", "value": 0.999}, "passed": true,
                       "cpu": {"model": "...", "isa": ["avx2", "avx512f", ...], "bf16_path": "amx"},
                       "versions": {"openvino": "2026.4.1", ...}, "created": "..."}}

Rules at load (``check_precision``): bf16 needs an fp32 artifact, the OpenVINO backend, a CPU with
AVX-512 BF16 or AMX (else a one-line DeviceUnavailableError naming the missing flags), and a
passing certificate made for this artifact's graph (sha256) on a CPU with the same bf16 path; a
missing, foreign or failing certificate is refused (FidelityError) unless ``allow_low_fidelity``.
Sharing (``shared=True``: batches of several callers) also needs the certificate to show batch
invariance (a row alone = in its batch within BATCH_INVARIANCE_TOLERANCE); without that it is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from crossrank.artifact import Artifact
from crossrank.errors import DeviceUnavailableError, FidelityError, InvalidArgumentError, UsageError
from crossrank.isa import (RuntimeChoice, bf16_path, cpu_model, default_runtime, describe_cpu, missing_bf16_flags,
                           preferred)
from crossrank.openvino_session import openvino_installed
from crossrank.settings import write_json_atomically

CERTIFICATES_FILE = "certificates.json"
CERTIFICATES_FORMAT = 1
# A backend/precision must give every row its alone answer within this (logit or embedding value).
BATCH_INVARIANCE_TOLERANCE = 1e-5
# (backend, precision) pairs that run only with a passing certificate (or allow_low_fidelity).
NEEDS_CERTIFICATE = {("openvino", "bf16")}
# The bars a certificate is judged by (the export's for the artifact precisions).
BARS = {
    ("cross", "fp32"): ("max_abs_diff", "<=", 1e-4),
    ("bi", "fp32"): ("max_abs_diff", "<=", 1e-4),
    ("cross", "int8"): ("spearman", ">=", 0.99),
    ("bi", "int8"): ("mean_cosine", ">=", 0.995),
    ("cross", "fp16"): ("spearman", ">=", 0.999),
    ("bi", "fp16"): ("mean_cosine", ">=", 0.9999),
    ("cross", "bf16"): ("spearman", ">=", 0.999),
    ("bi", "bf16"): ("mean_cosine", ">=", 0.999),
}


def certificate_key(backend: str, precision: str) -> str:
    return f"{backend}-{precision}"


def meets_bar(kind: str, precision: str, figures: dict, bars: dict | None = None) -> tuple[bool, dict, str]:
    """(passed, the bar as a record, a sentence) for fidelity ``figures`` (``bars``: a model
    family's own, over BARS)."""
    metric, op, bar = {**BARS, **(bars or {})}[(kind, precision)]
    value = figures.get(metric)
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value <= bar if op == "<=" else value >= bar)
    return ok, {"metric": metric, "op": op, "value": bar}, f"{metric} = {value:.6g} (bar: {op} {bar:g})" \
        if isinstance(value, (int, float)) else f"{metric} missing (bar: {op} {bar:g})"


def read_certificates(folder: str | Path) -> dict:
    """The certificates of an artifact folder (key -> record); {} when there is no file. A
    malformed file is a FidelityError naming it (never a crash, never silently trusted)."""
    path = Path(folder) / CERTIFICATES_FILE
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FidelityError(f"{path}: not readable JSON ({err}); delete it and run `crossrank certify` again") from None
    if not isinstance(document, dict) or document.get("format") != CERTIFICATES_FORMAT:
        raise FidelityError(f"{path}: expected a JSON object with 'format': {CERTIFICATES_FORMAT}; run "
                            f"`crossrank certify` again")
    return {k: v for k, v in document.items() if k != "format" and isinstance(v, dict)}


def write_certificate(folder: str | Path, record: dict) -> Path:
    """Add or replace one certificate (its key from the record's backend and precision) in
    ``folder/certificates.json``, atomically, keeping the others (writers take turns on a lock of the folder)."""
    from crossrank.locks import file_lock

    folder = Path(folder)
    path = folder / CERTIFICATES_FILE
    with file_lock(folder):  # the folder itself: nothing is created
        try:
            document = {"format": CERTIFICATES_FORMAT, **read_certificates(folder)}
        except FidelityError:
            document = {"format": CERTIFICATES_FORMAT}  # a broken file crossrank wrote is replaced
        document[certificate_key(record["backend"], record["precision"])] = record
        return write_json_atomically(path, document)


def certificate_problem(artifact: Artifact, record: dict | None, backend: str, precision: str,
                        flags: frozenset[str]) -> str | None:
    """Why ``record`` does not certify (backend, precision) of this artifact on this CPU; None when it does."""
    key = certificate_key(backend, precision)
    if record is None:
        return f"no {key} certificate in {artifact.path / CERTIFICATES_FILE}"
    if record.get("artifact_sha256") != artifact.sha256:
        return (f"the {key} certificate was made for another graph (sha256 {str(record.get('artifact_sha256'))[:12]}"
                f"..., this artifact's is {artifact.sha256[:12]}...)")
    if record.get("kind") != artifact.kind or (record.get("backend"), record.get("precision")) != (backend, precision):
        return f"the {key} certificate describes {record.get('backend')}-{record.get('precision')} of a " \
               f"{record.get('kind')} model"
    if precision == "bf16":
        made_on = (record.get("cpu") or {}).get("bf16_path")
        if made_on != bf16_path(flags):
            return f"the {key} certificate was measured with bf16 path {made_on!r}, this CPU's is {bf16_path(flags)!r}"
    figures = record.get("figures") if isinstance(record.get("figures"), dict) else {}
    passed, _, verdict = meets_bar(artifact.kind, precision, figures)
    if not passed:
        return f"the {key} certificate is below the fidelity bar: {verdict}"
    return None


def check_precision(artifact: Artifact, backend: str, precision: str, device: str, flags: frozenset[str], *,
                    allow_low_fidelity: bool, shared: bool) -> dict[str, Any]:
    """Refuse what may not run (see the module docstring); returns the fidelity record for
    ``describe()``: ``{"source": "manifest"|"certificate"|"uncertified", "certificate": key|None,
    "figures": {...}, "note": str|None}``."""
    where = repr(str(artifact.path))
    if precision != "bf16":
        if precision != artifact.precision:
            raise InvalidArgumentError(
                f"precision={precision!r} but the artifact {where} is {artifact.precision}: an artifact runs "
                f"its own precision (or bf16 from fp32); load the {precision} export of the model instead")
    else:
        if artifact.precision != "fp32":
            raise InvalidArgumentError(f"precision='bf16' computes an fp32 graph in bf16, but the artifact {where} "
                                       f"is {artifact.precision}: load the fp32 export of the model")
        if backend != "openvino":
            raise InvalidArgumentError(f"precision='bf16' runs on backend='openvino', not {backend!r}")
        missing = missing_bf16_flags(flags)
        if missing:
            raise DeviceUnavailableError(f"precision='bf16' needs AVX-512 BF16 or AMX; this CPU "
                                         f"({describe_cpu(flags, cpu_model())}) lacks {', '.join(missing)}")
    key = certificate_key(backend, precision)
    if backend == "onnxruntime":
        return {"source": "manifest", "certificate": None, "figures": artifact.manifest.get("fidelity") or {},
                "note": None}
    record = read_certificates(artifact.path).get(key)
    problem = certificate_problem(artifact, record, backend, precision, flags)
    if (backend, precision) in NEEDS_CERTIFICATE:
        if problem is not None and not allow_low_fidelity:
            raise FidelityError(f"{key} is refused for {where}: {problem}. Certify it on this machine with "
                                f"`crossrank certify {artifact.path} SRC --backend {backend} --precision "
                                f"{precision}`, or pass allow_low_fidelity=True to run it anyway")
        invariance = ((record or {}).get("figures") or {}).get("batch_invariance_max_abs_diff")
        if shared and (problem is not None or not isinstance(invariance, (int, float))
                       or invariance > BATCH_INVARIANCE_TOLERANCE):
            raise UsageError(f"shared=True is refused for {key} on {where}: sharing batches between callers "
                             f"needs a certificate showing every row's alone answer within "
                             f"{BATCH_INVARIANCE_TOLERANCE:g} ({problem or f'measured {invariance!r}'}); "
                             f"use shared=False or another precision")
    if problem is None:
        return {"source": "certificate", "certificate": key, "figures": record["figures"], "note": None}
    return {"source": "uncertified", "certificate": None, "figures": {}, "note": problem}


def artifact_runtime(artifact: Artifact, device: str, flags: frozenset[str]) -> RuntimeChoice:
    """crossrank.isa's default rule applied to this artifact on a CPU with ``flags``: what is
    installed, and whether a passing bf16 certificate for this graph and bf16 path exists."""
    certified = False
    if device == "cpu" and artifact.precision == "fp32" and preferred(flags).precision == "bf16":
        record = read_certificates(artifact.path).get(certificate_key("openvino", "bf16"))
        certified = record is not None and certificate_problem(artifact, record, "openvino", "bf16", flags) is None
    return default_runtime(flags, artifact.precision, device, openvino_installed=openvino_installed(),
                           bf16_certified=certified)


__all__ = ["BARS", "BATCH_INVARIANCE_TOLERANCE", "CERTIFICATES_FILE", "NEEDS_CERTIFICATE", "artifact_runtime",
           "certificate_key", "certificate_problem", "check_precision", "meets_bar", "read_certificates", "write_certificate"]
