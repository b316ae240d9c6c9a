"""Random-initialised checkpoints of each export family, with real tokenizers, for tests and speed runs.

No weights of the ModernBERT, DeBERTa-v2 or Qwen3 families are available offline; a seeded
random model of the real architecture proves an export exact against PyTorch (never its quality),
and one at a published model's configuration measures speed.

- encoders (``modernbert``, ``deberta-v2``): the bundled all-MiniLM-L6-v2 WordPiece tokenizer
  (``[CLS] q [SEP] d [SEP]``), ids below 30522 whatever the configured vocabulary.
- decoder (``qwen3``): a byte-level BPE with Qwen2's pre-tokenizer split, trained with
  ``tokenizers`` on the bundled Semanlink text, with the chat special tokens, ``<think>`` /
  ``</think>`` and ``yes`` / ``no`` as vocabulary entries.

``size="tiny"`` (tests: a few layers, hidden 64) or ``"real"``: the configuration of
gte-reranker-modernbert-base (ModernBERT-base), mxbai-rerank-xsmall-v1 (DeBERTa-v3-xsmall) and
Qwen3-Reranker-0.6B. Tiny DeBERTa and Qwen3 models are initialised wider than their configs'
default (0.2 and 0.1) so that their scores spread like a trained reranker's (logit std about 1 on
Semanlink pairs, against 1e-4 and 0.05): flat scores would make every fidelity figure trivially
small. Tiny ModernBERT spreads at its default (0.6).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .seeded import TOKENIZER_FILES
from .source import bundled_bi_encoder

FAMILY_MODELS = ("modernbert", "deberta-v2", "qwen3")
SIZES = ("tiny", "real")
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2 and Qwen3 models).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
CHAT_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MINILM_IDS = {"pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102}


def train_chat_bpe(vocab_size: int = 4096):
    """A Qwen-style byte-level BPE (``tokenizers.Tokenizer``) trained on Semanlink documents and tag
    labels; "yes" and "no" become whole tokens (lines of them are added to the training text)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from crossrank.evaluation.datasets import load_semanlink

    documents, queries = load_semanlink()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CHAT_SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([d.text for d in documents] + [q.text for q in queries] + ["yes no"] * 200, trainer)
    tokenizer.add_tokens(["<think>", "</think>"])
    for word in ("yes", "no"):
        if tokenizer.token_to_id(word) is None:
            raise RuntimeError(f"the trained BPE has no token {word!r}")
    return tokenizer


def _copy_minilm_tokenizer(out: Path) -> None:
    minilm = bundled_bi_encoder()
    for name in TOKENIZER_FILES:
        if (minilm / name).is_file():
            shutil.copy2(minilm / name, out / name)


def _modernbert(size: str, kind: str):
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel

    shape = (dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  global_attn_every_n_layers=2, local_attention=16, vocab_size=30522) if size == "tiny" else
             dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
                  global_attn_every_n_layers=3, local_attention=128, vocab_size=50368))
    config = ModernBertConfig(**shape, max_position_embeddings=8192, classifier_pooling="mean", num_labels=1,
                              bos_token_id=101, eos_token_id=102, **MINILM_IDS)
    if kind == "bi":
        config.architectures = ["ModernBertModel"]
        return ModernBertModel(config)
    config.architectures = ["ModernBertForSequenceClassification"]
    return ModernBertForSequenceClassification(config)


def _deberta_v2(size: str, kind: str):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  position_buckets=32, vocab_size=30522) if size == "tiny" else
             dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                  position_buckets=256, vocab_size=128100))
    config = DebertaV2Config(**shape, relative_attention=True, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                             norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
                             type_vocab_size=0, max_position_embeddings=512, num_labels=1, pad_token_id=0,
                             initializer_range=0.2 if size == "tiny" else 0.02)
    if kind == "bi":
        config.architectures = ["DebertaV2Model"]
        return DebertaV2Model(config)
    config.architectures = ["DebertaV2ForSequenceClassification"]
    return DebertaV2ForSequenceClassification(config)


def _qwen3(size: str, tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=tokenizer.get_vocab_size()) if size == "tiny" else
             dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151669))
    config = Qwen3Config(**shape, max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"],
                         initializer_range=0.1 if size == "tiny" else 0.02,
                         pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
                         eos_token_id=tokenizer.token_to_id("<|im_end|>"))
    return Qwen3ForCausalLM(config)


def build_random_model(family: str, out: str | Path, size: str = "tiny", kind: str = "cross", seed: int = 0) -> Path:
    """Write a seeded random checkpoint of ``family`` ("modernbert", "deberta-v2", "qwen3") with
    its tokenizer to ``out`` (a Hugging Face folder); ``kind`` "bi" gives the bare encoder."""
    import torch
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILY_MODELS or size not in SIZES:
        raise ValueError(f"family {family!r} / size {size!r}: expected one of {FAMILY_MODELS} / {SIZES}")
    if kind == "bi" and family == "qwen3":
        raise ValueError("the qwen3 family is exported as a reranker only")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if family == "qwen3":
        tokenizer = train_chat_bpe()
        model = _qwen3(size, tokenizer)
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                padding_side="left").save_pretrained(out)
    else:
        model = (_modernbert if family == "modernbert" else _deberta_v2)(size, kind)
        _copy_minilm_tokenizer(out)
    model.eval().save_pretrained(out, safe_serialization=True)
    return out


__all__ = ["FAMILY_MODELS", "build_random_model", "train_chat_bpe"]
