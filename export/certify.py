"""``crossrank certify ART SRC``: measure a backend/precision the export did not (e.g. OpenVINO
bf16) against the PyTorch reference on the export's fidelity set, on this machine, and record the
certificate beside the artifact (``ART/certificates.json``, crossrank.certificate).

The runtime reads certificates and never runs PyTorch; this module is export-side (torch,
transformers), like the export's own fidelity check.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from crossrank.artifact import load_artifact
from crossrank.certificate import BARS, check_precision, meets_bar, write_certificate
from crossrank.errors import InvalidArgumentError
from crossrank.isa import bf16_path, cpu_flags, cpu_model, isa_flags, missing_bf16_flags
from crossrank.openvino_session import openvino_version
from crossrank.session import build_session

from . import _versions, fidelity, source_files
from .source import inspect_source


def fidelity_sample_of(manifest: dict, fidelity_data: str | Path | None) -> fidelity.FidelitySample:
    """``fidelity_data`` when given; else the sample the export measured (its JSONL file when it
    was one and is still there), else the default Semanlink sample."""
    if fidelity_data is not None:
        return fidelity.jsonl_sample(fidelity_data)
    used = (manifest.get("fidelity") or {}).get("sample")
    if isinstance(used, str) and used.endswith(".jsonl") and Path(used).is_file():
        return fidelity.jsonl_sample(used)
    return fidelity.semanlink_sample()


def certify(artifact_path: str | Path, src: str | Path, backend: str = "openvino", precision: str = "bf16",
            fidelity_data: str | Path | None = None, threads: int | None = None) -> tuple[dict, Path]:
    """Measure ``backend``/``precision`` of the artifact against ``src`` (the checkpoint it was
    exported from), write the certificate (passing or not) and return (record, file)."""
    artifact = load_artifact(artifact_path)
    flags = cpu_flags()
    if (artifact.kind, precision) not in BARS:
        raise InvalidArgumentError(f"--precision {precision!r}: no fidelity bar for a {artifact.kind} model in it")
    if precision == "bf16":
        check_precision(artifact, backend, precision, "cpu", flags, allow_low_fidelity=True, shared=False)
    elif precision != artifact.precision:
        raise InvalidArgumentError(f"--precision {precision!r}: the artifact is {artifact.precision}; certify its "
                                   f"own precision on another backend, or bf16 of an fp32 artifact")
    source = inspect_source(src, artifact.kind)
    if source_files(source.path) != (artifact.manifest.get("source") or {}).get("files"):
        raise InvalidArgumentError(f"{str(src)!r} is not the checkpoint {str(artifact.path)!r} was exported from "
                                   f"(its files' sha256 differ from the manifest's 'source.files')")
    sample = fidelity_sample_of(artifact.manifest, fidelity_data)
    session = build_session(artifact.model_path, device="cpu", threads=threads, backend=backend, precision=precision)
    figures = fidelity.measure_fidelity(source, artifact.model_path, sample, artifact.max_length, session=session)
    passed, bar, verdict = meets_bar(artifact.kind, precision, figures)
    versions = {**_versions(), **({"openvino": openvino_version()} if backend == "openvino" else {})}
    record = {
        "artifact_sha256": artifact.sha256, "kind": artifact.kind, "backend": backend, "precision": precision,
        "figures": figures, "bar": bar, "verdict": verdict, "passed": passed,
        "cpu": {"model": cpu_model(), "isa": isa_flags(flags), "bf16_path": bf16_path(flags),
                "missing_bf16": missing_bf16_flags(flags)},
        "versions": versions, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return record, write_certificate(artifact.path, record)


__all__ = ["certify", "fidelity_sample_of"]
