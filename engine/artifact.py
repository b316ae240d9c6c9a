"""Artifact folders: the contract between `crossrank.export` and the runtime.

An artifact folder holds ``model.onnx``, ``tokenizer.json`` and ``manifest.json``. The manifest
records what the graph computes (kind, precision, max_length, pooling or score activation) and
the sha256 of every file; loading verifies each file against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import ArtifactError

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
KINDS = ("cross", "bi")
PRECISIONS = ("fp32", "int8", "fp16")
ACTIVATIONS = ("sigmoid", "identity")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def sha256(self) -> str:
        """Identity of the artifact: the sha256 of its model graph."""
        return self.manifest["files"][MODEL_FILE]


_REQUIRED = ("format", "kind", "precision", "max_length", "files", "inputs", "output")


def load_artifact(path: str | Path, verify: bool = True, expect_kind: str | None = None) -> Artifact:
    """Read ``manifest.json`` of an artifact folder and (by default) check every file's sha256.

    Raises ArtifactError naming the folder or file and what was expected.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {str(folder)!r} does not exist or is not a folder")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{str(folder)!r} is not a crossrank artifact: no {MANIFEST} "
            f"(make one with `crossrank export SRC {folder}`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{str(manifest_path)!r} is not valid JSON: {err}") from err
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"{str(manifest_path)!r} lacks the keys {missing}")
    if manifest["format"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{str(manifest_path)!r} has format {manifest['format']!r}; this crossrank reads "
            f"format {FORMAT_VERSION}: export the model again"
        )
    if manifest["kind"] not in KINDS:
        raise ArtifactError(f"{str(manifest_path)!r}: kind {manifest['kind']!r} is not one of {KINDS}")
    if expect_kind is not None and manifest["kind"] != expect_kind:
        wanted = {"cross": "a cross-encoder (reranker)", "bi": "a bi-encoder (embedder)"}[expect_kind]
        raise ArtifactError(
            f"{str(folder)!r} holds a {manifest['kind']!r} model, but {wanted} was expected"
        )
    if manifest["kind"] == "cross" and manifest.get("activation") not in ACTIVATIONS:
        raise ArtifactError(f"{str(manifest_path)!r}: 'activation' = {manifest.get('activation')!r} is not one "
                            f"of {ACTIVATIONS} (a cross-encoder's scores need it)")
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if name not in manifest["files"]:
            raise ArtifactError(f"{str(manifest_path)!r} lists no sha256 for {name}")
    if verify:
        for name, expected in manifest["files"].items():
            file_path = folder / name
            if not file_path.is_file():
                raise ArtifactError(f"artifact file {str(file_path)!r} listed in the manifest is missing")
            actual = sha256_file(file_path)
            if actual != expected:
                raise ArtifactError(
                    f"artifact file {str(file_path)!r} does not match its manifest: sha256 "
                    f"{actual[:16]}... != {expected[:16]}... (file changed or corrupted; export again)"
                )
    return Artifact(folder, manifest)


__all__ = ["ACTIVATIONS", "Artifact", "ArtifactError", "KINDS", "MANIFEST", "MODEL_FILE", "PRECISIONS",
           "TOKENIZER_FILE", "load_artifact", "sha256_file"]
