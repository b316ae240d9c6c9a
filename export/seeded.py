"""A cross-encoder folder built from real encoder weights with a seeded (untrained) score head.

Used by tests and benchmarks as a stand-in *shape* for a reranker where no trained one exists:
the encoder weights are real, only the one-logit classifier is random (seeded).
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "sentencepiece.bpe.model")


def build_seeded_cross_encoder(encoder_folder: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Write ``BertForSequenceClassification(num_labels=1)`` from ``encoder_folder`` to ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "some weights newly initialized": that is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(encoder_folder, num_labels=1)
    finally:
        logging.set_verbosity(verbosity)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(encoder_folder) / name).is_file():
            shutil.copy2(Path(encoder_folder) / name, out / name)
    return out
