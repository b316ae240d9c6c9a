"""ModernBERT encoders (e.g. Alibaba-NLP/gte-reranker-modernbert-base): rotary positions,
alternating local (sliding window) and global attention, no token_type_ids, 8k positions."""

from . import PER_ROW_RECIPES, Family

FAMILY = Family(
    name="modernbert",
    cross_architectures=("ModernBertForSequenceClassification",),
    bi_model_types=("modernbert",),
    inputs=("input_ids", "attention_mask"),
    pairs="segments",
    head="classifier",
    # The BERT rules fuse its LayerNorm/SkipLayerNorm/Gelu; attention (rotary, sliding window) stays unfused.
    fusion="bert",
    int8_recipes=PER_ROW_RECIPES,
    notes="attention stays unfused (rotary positions and the local window are not in onnxruntime's BERT rules)",
)
