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
    fusions_off=("enable_attention", "enable_embed_layer_norm"),  # rotary attention: no onnxruntime pattern
    # The classifier head reads the MEAN over tokens, whose float sum order depends on the padded length
    # (a last-bit difference); quantizing the head's GEMM turned that into 6.5e-5 on a logit
    # (gte-reranker-modernbert-base configuration, a pair alone vs beside a 512-token mate). In fp32 it
    # stays at the last bit: one 768 x 768 GEMM per pair.
    int8_keep_fp32=r"^/head/",
)
