"""Export a Hugging Face checkpoint to a crossrank artifact folder (ONNX + tokenizer + manifest).

Needs the ``export`` extra (torch, transformers, optimum-onnx); the runtime never imports this.

    from crossrank.export import export_model
    export_model("path/to/hf-folder", "artifacts/reranker-int8", kind="cross", precision="int8")
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from crossrank.artifact import (FORMAT_VERSION, MANIFEST, MODEL_FILE, PRECISIONS, TOKENIZER_FILE, load_artifact,
                                sha256_file)
from crossrank.errors import ArtifactError, CrossrankError, InvalidArgumentError

from .output import check_output, clean_stale, replace_atomically
from .families import FAMILIES
from .source import WEIGHT_FILES, SourceError, SourceModel, bundled_bi_encoder, inspect_source, source_tokenizer

OPSET = 17


class ExportError(CrossrankError, RuntimeError):
    """The export ran but its result is not acceptable (e.g. fidelity below the bar)."""


class _Stages:
    """Prints numbered export stages with their duration (the export's progress display)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done = total, quiet, 0
        self.timings: dict[str, float] = {}

    def run(self, label: str, func, *args, **kwargs):
        self.done += 1
        if not self.quiet:
            print(f"[{self.done}/{self.total}] {label} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = func(*args, **kwargs)
        seconds = time.perf_counter() - start
        self.timings[label] = round(seconds, 3)
        if not self.quiet:
            print(f" {seconds:.1f} s", file=sys.stderr, flush=True)
        return result


def _export_raw_onnx(source: SourceModel, folder: Path) -> Path:
    """optimum's plain export: the classifier (``text-classification``) for classifier heads, the
    last hidden state (``feature-extraction``) for bi-encoders and yes/no decoder heads."""
    import warnings

    from optimum.exporters.onnx import main_export

    classifier = source.kind == "cross" and FAMILIES[source.family].head == "classifier"
    task = "text-classification" if classifier else "feature-extraction"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(
            str(source.path), output=str(folder), task=task, opset=OPSET, device="cpu",
            library_name="transformers", do_validation=False, no_post_process=True,
        )
    return folder / MODEL_FILE


def _build_graph(source: SourceModel, raw_onnx: Path, precision: str):
    """The family's fusions (if any) and head on the plain graph: (model, fused op counts)."""
    import onnx

    from crossrank.kernels.fusion import fuse_transformer
    from crossrank.kernels.heads import add_pooling_head, add_positions, add_score_head, add_yes_no_head

    family = FAMILIES[source.family]
    if family.fusion is None:
        model, fused = onnx.load(str(raw_onnx)), {}
    else:
        model, fused = fuse_transformer(raw_onnx, family.fusion, source.num_heads, source.hidden_size,
                                        for_gpu=precision == "fp16", disabled=family.fusions_off)
    unknown = sorted({i.name for i in model.graph.input} - set(family.inputs) - {"position_ids"})
    if unknown:
        raise ExportError(f"the {family.name} graph takes inputs {unknown} that the family does not provide")
    if source.kind == "bi":
        add_pooling_head(model, pooling=source.pooling, normalize=source.normalize)
    elif family.head == "yes-no":
        add_positions(model)
        add_yes_no_head(model, answer_direction(source))
    else:
        add_score_head(model, num_labels=source.num_labels)
    return model, fused


def answer_direction(source: SourceModel):
    """W_yes - W_no [hidden] of a decoder's output projection (its tied embeddings when it has none)."""
    from .source import read_weight_rows

    yes_id, no_id = source.template["yes_id"], source.template["no_id"]
    rows = read_weight_rows(source.path, ("lm_head.weight", "model.embed_tokens.weight"), [yes_id, no_id])
    return rows[0] - rows[1]


def _write_tokenizer(source: SourceModel, dst: Path) -> None:
    """tokenizer.json without the source's padding and truncation: the engine sets both itself."""
    tokenizer = source_tokenizer(source.path)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(dst))


def source_files(folder: Path) -> dict[str, str]:
    shards = sorted(path.name for path in folder.glob("model-*-of-*.safetensors"))
    names = ("config.json", *WEIGHT_FILES, *shards, TOKENIZER_FILE)
    return {name: sha256_file(folder / name) for name in names if (folder / name).is_file()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("onnxruntime", "onnx", "torch", "transformers", "optimum", "optimum-onnx", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def export_model(src: str | Path, out: str | Path, kind: str, precision: str = "fp32", *,
                 force: bool = False, allow_low_fidelity: bool = False, max_length: int | None = None,
                 int8_recipe: str | None = None, fidelity_data: str | Path | None = None,
                 template: str | Path | None = None, quiet: bool = False) -> dict:
    """Export ``src`` to the artifact folder ``out``; returns the manifest.

    How is the family's (``crossrank.export.families``): graph inputs, pair building, head,
    fusions, int8 recipes and fidelity bars. ``template``: a decoder reranker's prompt template,
    bundled name or JSON file (default: the family's; ``crossrank.export.prompts``).

    The folder is built next to ``out`` under a temporary name and renamed into place only when
    every stage, the fidelity check included, has passed: an interrupted export leaves nothing
    half-written at ``out``. ``force`` replaces an existing artifact, never anything else (see
    crossrank.export.output); leftovers of killed exports of ``out`` are cleaned up first.
    """

    from crossrank.kernels.graph_files import graph_inputs, save_graph
    from crossrank.kernels.heads import head_node_names
    from crossrank.kernels.quantize import get_recipe, quantize_int8

    from . import fidelity

    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"--precision {precision!r} is not one of {PRECISIONS}")
    if int8_recipe is not None and precision != "int8":
        raise InvalidArgumentError(f"--int8-recipe {int8_recipe!r} needs --precision int8, not {precision!r}")
    if int8_recipe is not None:
        get_recipe(int8_recipe)  # an unknown or renamed recipe is named before any work
    out = Path(out)
    source = inspect_source(src, kind, template)
    family = FAMILIES[source.family]
    recipe_name = family.check_precision(precision, int8_recipe)
    recipe = get_recipe(recipe_name) if recipe_name else None
    if recipe is not None and family.int8_keep_fp32:
        kept = "|".join(pattern for pattern in (recipe.keep_fp32, family.int8_keep_fp32) if pattern)
        recipe = dataclasses.replace(recipe, keep_fp32=kept)
    if recipe is not None and recipe.needs_calibration and family.pairs != "segments":
        dynamic = [name for name in family.int8_recipes if not get_recipe(name).needs_calibration]
        raise InvalidArgumentError(f"--int8-recipe {recipe.name!r} is calibrated on segment pairs; the {family.name} "
                                   f"family takes {dynamic}")
    check_output(out, source.path, force)  # before any work: nothing to lose, nothing wasted
    if max_length is not None:
        if not 8 <= max_length <= source.max_length:
            raise InvalidArgumentError(f"--max-length {max_length} must be between 8 and the model's limit {source.max_length}")
        source = SourceModel(**{**source.__dict__, "max_length": max_length})
    sample = fidelity.jsonl_sample(fidelity_data) if fidelity_data else fidelity.semanlink_sample()

    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    check_output(out, source.path, force)  # again: an interrupted replacement may have been restored
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    stages = _Stages(4 if precision == "fp32" else 5, quiet)
    try:
        raw = stages.run(f"exporting {source.architecture} with optimum (opset {OPSET})",
                         _export_raw_onnx, source, work / "raw")
        head = family.head if kind == "cross" else "pooling"
        model, fused = stages.run(f"fusing ({family.fusion or 'no fusion rules'}) and adding the {head} head",
                                  _build_graph, source, raw, precision)
        model_path = work / MODEL_FILE
        if precision == "fp16":
            from crossrank.kernels.fusion import convert_to_fp16

            model = stages.run("converting to fp16", convert_to_fp16, model, head_node_names(model))
        if precision == "int8":
            fp32_path = work / "fp32.onnx"
            save_graph(model, fp32_path)
            del model
            feeds = _calibration_feeds(source, sample) if recipe.needs_calibration else None
            stages.run(f"quantizing to int8 ({recipe.name})", quantize_int8, fp32_path, model_path, recipe, feeds)
            for leftover in work.glob("fp32.onnx*"):
                leftover.unlink()
        else:
            save_graph(model, model_path)
            del model
        shutil.rmtree(work / "raw")
        stages.run("writing tokenizer.json", _write_tokenizer, source, work / TOKENIZER_FILE)
        figures = stages.run(f"measuring fidelity against PyTorch ({sample.source})",
                             fidelity.measure_fidelity, source, model_path, sample, source.max_length)
        passed, verdict = fidelity.check_bar(kind, precision, figures, family.bars)
        figures["bar"] = verdict
        figures["passed"] = passed
        if not passed and not allow_low_fidelity:
            raise ExportError(
                f"{kind} {precision} export of {source.name!r} is below the fidelity bar: {verdict}; "
                f"pass --allow-low-fidelity to keep it anyway"
            )
        manifest = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "family": source.family,
            "precision": precision,
            "max_length": source.max_length,
            "inputs": graph_inputs(model_path),
            "output": "logits" if kind == "cross" else "embeddings",
            "activation": "sigmoid" if kind == "cross" else None,
            "dim": source.hidden_size if kind == "bi" else None,
            "pooling": source.pooling,
            "normalized": source.normalize if kind == "bi" else None,
            "prompt": source.template,
            "source": {"name": source.name, "architecture": source.architecture,
                       "model_type": source.model_type, "num_labels": source.num_labels,
                       "files": source_files(source.path)},
            "opset": OPSET,
            "onnxruntime_version": _versions().get("onnxruntime"),
            "versions": _versions(),
            "fusions": fused,
            "quantization": recipe.as_manifest() if recipe else None,
            "fidelity": figures,
            "export_seconds": round(time.perf_counter() - started, 1),
            "stage_seconds": stages.timings,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {path.name: sha256_file(path) for path in sorted(work.iterdir())
                      if path.is_file() and path.name != MANIFEST},
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_atomically(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _calibration_feeds(source: SourceModel, sample) -> list[dict]:
    """Calibration batches for static int8 recipes: the sample's second half (reversed pairing,
    so the measured pairs themselves are not the calibration set)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    texts = sample.texts[::-1]
    queries = [q for q, docs in zip(sample.queries, sample.documents) for _ in docs]
    feeds = []
    for start in range(0, len(texts), 16):
        kwargs = dict(padding=True, max_length=source.max_length, return_tensors="np")
        if source.kind == "cross":
            enc = tokenizer(queries[start:start + 16], texts[start:start + 16], truncation="only_second", **kwargs)
        else:
            enc = tokenizer(texts[start:start + 16], truncation=True, **kwargs)
        feeds.append({k: v.astype("int64") for k, v in enc.items()})
    return feeds


def ensure_artifact(src: str | Path, out: str | Path, kind: str, precision: str, **options):
    """(artifact, reused): ``out`` when it verifies against its manifest and was exported at
    ``precision`` (and, for int8, with the requested or else the default recipe) from ``src``'s
    current files; else export it (``force``: a retrained model, or an artifact of an older default
    recipe, is re-exported). ``options`` go to ``export_model``."""
    from crossrank.kernels.quantize import DEFAULT_INT8_RECIPE

    src, out = Path(src), Path(out)
    recipe = (options.get("int8_recipe") or DEFAULT_INT8_RECIPE) if precision == "int8" else None
    try:
        artifact = load_artifact(out, expect_kind=kind)
        manifest = artifact.manifest
        if (manifest.get("precision") == precision and manifest.get("source", {}).get("files") == source_files(src)
                and (recipe is None or (manifest.get("quantization") or {}).get("name") == recipe)):
            return artifact, True
    except ArtifactError:
        pass
    print(f"exporting {src} -> {out} ({kind}, {precision}{', ' + recipe if recipe else ''})", file=sys.stderr)
    export_model(src, out, kind=kind, precision=precision, force=True, **options)
    return load_artifact(out, expect_kind=kind), False


__all__ = ["ExportError", "SourceError", "bundled_bi_encoder", "ensure_artifact", "export_model", "inspect_source",
           "source_files"]
