"""Decoder yes/no rerankers on Qwen3 (Qwen/Qwen3-Reranker-0.6B/4B/8B): a causal LM reads a chat
prompt; the score is sigmoid(logit_yes - logit_no) at the last position."""

from . import PER_ROW_RECIPES, Family

FAMILY = Family(
    name="qwen3-yes-no",
    cross_architectures=("Qwen3ForCausalLM",),
    bi_model_types=(),
    inputs=("input_ids", "attention_mask"),
    pairs="prompt",
    head="yes-no",
    fusion="qwen3",  # SimplifiedLayerNormalization (RMSNorm), SkipSimplifiedLayerNormalization, RotaryEmbedding
    int8_recipes=PER_ROW_RECIPES,
    fusions_off=("enable_attention",),  # grouped-query attention with q/k norms: no onnxruntime pattern here
    default_template="qwen3-reranker",
    precisions=("fp32", "int8"),
)
