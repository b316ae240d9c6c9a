"""BERT, RoBERTa and XLM-RoBERTa encoders (cross-encoders and bi-encoders)."""

from crossrank.kernels.quantize import DEFAULT_INT8_RECIPE, RECIPES

from . import Family

FAMILY = Family(
    name="bert",
    cross_architectures=("BertForSequenceClassification", "RobertaForSequenceClassification",
                         "XLMRobertaForSequenceClassification"),
    bi_model_types=("bert", "roberta", "xlm-roberta"),
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    pairs="segments",
    head="classifier",
    fusion="bert",  # EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu
    int8_recipes=(DEFAULT_INT8_RECIPE, *sorted(set(RECIPES) - {DEFAULT_INT8_RECIPE})),
)
