"""Artifact folders: the contract between `crossrank.export` and the runtime.

An artifact folder holds ``model.onnx``, ``tokenizer.json`` and ``manifest.json``. The manifest
records what the graph computes (kind, precision, max_length, pooling or score activation; for a
decoder reranker its prompt template, "prompt") and the sha256 of every file; loading verifies
each file against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import ArtifactError, check_fields, is_int, is_one_of, is_type, plain_file_name
from crossrank.tokenize import check_prompt

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

    def summary(self) -> dict[str, Any]:
        """What the manifest says about the model, in a few keys: kind, precision, max_length,
        source (the folder or model id it was exported from), int8_recipe (None unless int8),
        sha256 (of the graph), and dim (bi) or activation (cross)."""
        m = self.manifest
        shape = {"dim": m["dim"]} if self.kind == "bi" else {"activation": m["activation"]}
        return {"kind": self.kind, "precision": self.precision, "max_length": self.max_length,
                "source": (m.get("source") or {}).get("name"), "int8_recipe": (m.get("quantization") or {}).get("name"),
                "sha256": self.sha256, **shape}


def _is_sha256_map(files) -> str | None:
    if not isinstance(files, dict) or not files:
        return "must be a non-empty object of file name -> sha256"
    for name, digest in files.items():
        problem = plain_file_name(name)
        if problem:
            return problem
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return f"has no sha256 (64 hex digits) for {name!r}, got {digest!r:.70}"
    missing = [name for name in (MODEL_FILE, TOKENIZER_FILE) if name not in files]
    return f"lists no sha256 for {missing[0]}" if missing else None


def _is_inputs(inputs) -> str | None:
    known = ("input_ids", "attention_mask", "token_type_ids")
    if not isinstance(inputs, list) or not {"input_ids", "attention_mask"} <= set(inputs) \
            or not set(inputs) <= set(known) or len(set(inputs)) != len(inputs):
        return f"must list input_ids, attention_mask and optionally token_type_ids, got {inputs!r:.80}"
    return None


# The manifest written by crossrank.export: every key it may hold and what each must be.
MANIFEST_FIELDS = {
    "format": is_one_of(FORMAT_VERSION), "kind": is_one_of(*KINDS), "precision": is_one_of(*PRECISIONS),
    "max_length": is_int(8, 1 << 20), "files": _is_sha256_map, "inputs": _is_inputs,
    "output": is_one_of("logits", "embeddings"), "activation": is_one_of(None, *ACTIVATIONS),
    "dim": is_type(int, optional=True), "pooling": is_one_of(None, "mean", "cls"),
    "normalized": is_type(bool, optional=True), "source": is_type(dict), "opset": is_int(1),
    "onnxruntime_version": is_type(str, optional=True), "versions": is_type(dict), "fusions": is_type(dict),
    "quantization": is_type(dict, optional=True), "fidelity": is_type(dict), "export_seconds": is_type(int, float),
    "stage_seconds": is_type(dict), "created": is_type(str), "family": is_type(str, optional=True),
    "prompt": lambda prompt: None if prompt is None else check_prompt(prompt),
}
REQUIRED_FIELDS = ("format", "kind", "precision", "max_length", "files", "inputs", "output")
KIND_FIELDS = {  # what each kind's graph returns and how the engine reads it
    "cross": {"output": "logits"},
    "bi": {"output": "embeddings"},
}


def validate_manifest(manifest: Any, where: str) -> dict:
    """Check a parsed manifest.json against MANIFEST_FIELDS and the rules between its keys."""
    if isinstance(manifest, dict) and "format" in manifest and manifest["format"] != FORMAT_VERSION:
        raise ArtifactError(f"{where} has format {manifest['format']!r}; this crossrank reads "
                            f"format {FORMAT_VERSION}: export the model again")
    check_fields(manifest, where, MANIFEST_FIELDS, REQUIRED_FIELDS, ArtifactError)
    kind = manifest["kind"]
    if manifest["output"] != KIND_FIELDS[kind]["output"]:
        raise ArtifactError(f"{where}: 'output' {manifest['output']!r} does not fit kind {kind!r} "
                            f"(a {kind} graph returns {KIND_FIELDS[kind]['output']!r})")
    if kind == "cross" and manifest.get("activation") not in ACTIVATIONS:
        raise ArtifactError(f"{where}: 'activation' = {manifest.get('activation')!r} is not one of "
                            f"{ACTIVATIONS} (a cross-encoder's scores need it)")
    if kind == "bi" and manifest.get("prompt") is not None:
        raise ArtifactError(f"{where}: a bi-encoder has no 'prompt' (a prompt template is a decoder reranker's)")
    if kind == "bi" and (not isinstance(manifest.get("dim"), int) or manifest["dim"] < 1):
        raise ArtifactError(f"{where}: 'dim' = {manifest.get('dim')!r}: a bi-encoder needs its embedding "
                            f"dimension (a positive integer)")
    return manifest


# -- reading what the graph itself says (no onnx package: a few protobuf fields) ------------------

def _varint(data, at: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, at
        shift += 7


def _fields(data, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited value) of a message."""
    at = start
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, wire, value
        elif wire == 2:
            length, at = _varint(data, at)
            yield number, wire, (at, at + length)
            at += length
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ArtifactError(f"unsupported protobuf wire type {wire}")


def initializer_dims(model_path: str | Path, name_suffixes: tuple[str, ...]) -> list[int] | None:
    """Dims of the first initializer whose name ends with one of ``name_suffixes`` (None if none), read from
    the ONNX file's protobuf (ModelProto.graph=7 -> GraphProto.initializer=5 -> TensorProto dims=1,
    name=8) without loading the weights."""
    import mmap

    with open(model_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        graph = next(((a, b) for n, w, (a, b) in ((n, w, v) for n, w, v in _fields(data, 0, len(data)) if w == 2)
                      if n == 7), None)
        if graph is None:
            return None
        for number, wire, value in _fields(data, *graph):
            if number != 5 or wire != 2:
                continue
            dims, name = [], None
            for field, kind, item in _fields(data, *value):
                if field == 1 and kind == 0:
                    dims.append(item)
                elif field == 1 and kind == 2:  # packed
                    at, stop = item
                    while at < stop:
                        dim, at = _varint(data, at)
                        dims.append(dim)
                elif field == 8 and kind == 2:
                    name = bytes(data[item[0]:item[1]]).decode("utf-8", "replace")
            if name is not None and name.endswith(name_suffixes):
                return dims
    return None


def position_limit(model_path: str | Path, model_type: str | None) -> int | None:
    """Tokens the graph's position table holds (None when it has no recognisable one)."""
    try:
        dims = initializer_dims(model_path, ("position_embeddings.weight", "position_embeddings.weight_quantized"))
    except (OSError, ValueError, IndexError):
        return None
    if not dims:
        return None
    return dims[0] - (2 if model_type in ("xlm-roberta", "roberta") else 0)  # positions start after padding_idx


def check_graph(artifact: "Artifact", session) -> None:
    """The loaded graph's inputs and output agree with the manifest (a swapped kind or a wrong
    dim would otherwise surface as numpy broadcasting errors at the first call)."""
    where = repr(str(artifact.path / MANIFEST))
    manifest = artifact.manifest
    inputs = sorted(i.name for i in session.get_inputs())
    if inputs != sorted(manifest["inputs"]):
        raise ArtifactError(f"{where}: 'inputs' {manifest['inputs']} but the graph takes {inputs}")
    output = session.get_outputs()[0]
    if output.name != manifest["output"]:
        raise ArtifactError(f"{where}: 'output' {manifest['output']!r} but the graph returns {output.name!r}")
    shape = list(output.shape)
    if artifact.kind == "cross" and len(shape) != 1:
        raise ArtifactError(f"{where}: a cross-encoder graph returns one logit per pair, this one {shape}")
    if artifact.kind == "bi" and (len(shape) != 2 or (isinstance(shape[-1], int) and shape[-1] != manifest["dim"])):
        raise ArtifactError(f"{where}: 'dim' {manifest['dim']} but the graph returns embeddings of shape {shape}")


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
    validate_manifest(manifest, repr(str(manifest_path)))
    if expect_kind is not None and manifest["kind"] != expect_kind:
        wanted = {"cross": "a cross-encoder (reranker)", "bi": "a bi-encoder (embedder)"}[expect_kind]
        raise ArtifactError(
            f"{str(folder)!r} holds a {manifest['kind']!r} model, but {wanted} was expected"
        )
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
    limit = position_limit(folder / MODEL_FILE, (manifest.get("source") or {}).get("model_type"))
    if limit is not None and manifest["max_length"] > limit:
        raise ArtifactError(f"{str(manifest_path)!r}: 'max_length' {manifest['max_length']} exceeds the "
                            f"{limit} positions of the graph's position table")
    return Artifact(folder, manifest)


__all__ = ["ACTIVATIONS", "Artifact", "ArtifactError", "KINDS", "MANIFEST", "MODEL_FILE", "PRECISIONS",
           "TOKENIZER_FILE", "check_graph", "load_artifact", "position_limit", "sha256_file", "validate_manifest"]
