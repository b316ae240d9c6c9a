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
    # Its attention matches no onnxruntime pattern; and symbolic shape inference on its relative-position
    # graph never settled (12 layers, DeBERTa-v3-xsmall: > 15 minutes, 5 GB), so both passes are off.
    fusions_off=("enable_attention", "enable_embed_layer_norm", "enable_shape_inference"),
)
