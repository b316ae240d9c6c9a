"""A reranker given as a Hugging Face model folder instead of an artifact (``crossrank select``,
``search --reranker``, ``eval --reranker``): exported once into the artifact cache, then reused.

A command-line front: it imports ``crossrank.export`` lazily, only when a model folder is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

from crossrank.errors import MissingFileError, UsageError

DEFAULT_ARTIFACTS = Path("artifacts")
PRECISIONS = ("int8", "fp32", "fp16")


def default_precision(device: str) -> str:
    """int8 on CPU (the per-row recipe), fp16 on CUDA."""
    return "fp16" if device == "cuda" else "int8"


def is_model_folder(path: str | Path) -> bool:
    """A Hugging Face model folder: config.json and no manifest.json (an artifact has one)."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "manifest.json").is_file()


def export_command(folder: str | Path, out: str | Path, precision: str) -> str:
    return f"crossrank export {folder} {out} --kind cross --precision {precision}"


def reranker_artifact(path: str | Path, precision: str, artifacts: str | Path = DEFAULT_ARTIFACTS) -> Path:
    """``path`` itself when it is an artifact folder; a model folder's cached export
    ``artifacts/<folder name>-<precision>`` (exported now when missing, damaged, of other files
    than the folder's, or of an older int8 recipe; a line on stderr says which)."""
    folder = Path(path)
    if not folder.is_dir():
        raise MissingFileError(f"reranker {str(path)!r} is not a folder: pass an artifact folder (crossrank export "
                               f"makes one) or a Hugging Face model folder (with config.json); for a hub model, "
                               f"run `{export_command('MODEL_ID', Path(artifacts) / 'NAME-int8', 'int8')}` "
                               f"where the hub is reachable")
    if not is_model_folder(folder):
        return folder  # an artifact (or a broken folder: the Reranker's error names what is wrong)
    out = Path(artifacts) / f"{folder.resolve().name}-{precision}"
    try:
        from crossrank.export import ensure_artifact
    except ImportError as err:
        raise UsageError(f"{str(path)!r} is a model folder, not an artifact, and exporting it needs the 'export' "
                         f"extra (pip install 'crossrank[export]'; {err}); or run "
                         f"`{export_command(folder, out, precision)}` where it is installed and pass {str(out)!r}") \
            from None
    artifact, reused = ensure_artifact(folder, out, "cross", precision)
    print(f"{'[cached]' if reused else '[new]   '} {folder} -> {artifact.path} ({precision})", file=sys.stderr)
    return artifact.path


def add_model_folder_arguments(p) -> None:
    """--export-precision and --artifacts: how a model folder given as a reranker is exported."""
    p.add_argument("--export-precision", choices=PRECISIONS, default=None,
                   help="precision a model folder given as a reranker is exported at, once, into --artifacts "
                        "(default: int8 on cpu, fp16 on cuda)")
    p.add_argument("--artifacts", default=str(DEFAULT_ARTIFACTS), metavar="DIR",
                   help="artifact cache for model folders given as rerankers: DIR/<folder name>-<precision> "
                        "(default: artifacts/)")


def reranker_artifacts(paths: list[str], args) -> list[str]:
    """Every --reranker/--rerankers path as an artifact folder (model folders exported, see above)."""
    precision = args.export_precision or default_precision(args.device)
    return [str(reranker_artifact(path, precision, args.artifacts)) for path in paths]


__all__ = ["DEFAULT_ARTIFACTS", "add_model_folder_arguments", "default_precision", "export_command",
           "is_model_folder", "reranker_artifact", "reranker_artifacts"]
