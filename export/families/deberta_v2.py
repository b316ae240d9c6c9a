"""DeBERTa-v2/v3 encoders (e.g. mixedbread-ai/mxbai-rerank-xsmall/base/large-v1): disentangled
attention over relative position buckets."""

from . import PER_ROW_RECIPES, Family

FAMILY = Family(
    name="deberta-v2",
    cross_architectures=("DebertaV2ForSequenceClassification",),
    bi_model_types=("deberta-v2",),
    inputs=("input_ids", "attention_mask", "token_type_ids"),  # token_type_ids only where type_vocab_size > 0
    pairs="segments",
    head="classifier",
    fusion="bert",  # LayerNorm/SkipLayerNorm/Gelu; the disentangled attention stays unfused
    int8_recipes=PER_ROW_RECIPES,
    notes="the disentangled attention stays unfused",
)
