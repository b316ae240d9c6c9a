"""The export families beyond BERT: ModernBERT, DeBERTa-v2 and Qwen3 yes/no decoder rerankers.

No weights of these families exist offline, so each is a seeded random-initialised tiny model of
the real architecture (crossrank.export.random_models) with a real tokenizer: the MiniLM WordPiece
for the encoders, a byte-level BPE trained on Semanlink for the decoder. They prove the exports
exact against PyTorch (fp32 max abs logit diff <= 1e-4, the decoder against its model card's
computation) and batch-invariant, on real Semanlink and TREC RAG text; they say nothing about
the quality of published weights.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import crossrank
from crossrank.errors import InvalidArgumentError
from crossrank.export import ExportError, SourceError, export_model
from crossrank.export.random_models import FAMILY_MODELS

TOLERANCE = 1e-5     # logit moved by batch mates
ONE_CALL = 1 << 20   # token budget that puts every row of a request into one model call
EXPECTED = {  # family -> (registry name, graph inputs, a fused op the family's rules must produce)
    "modernbert": ("modernbert", ["input_ids", "attention_mask"], "SkipLayerNormalization"),
    "deberta-v2": ("deberta-v2", ["input_ids", "attention_mask"], "SkipLayerNormalization"),
    "qwen3": ("qwen3-yes-no", ["input_ids", "attention_mask"], "RotaryEmbedding"),
}


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.fixture(scope="module")
def trec_pairs(trec_rag):
    """Real TREC RAG queries with passages of 100-450 tokens: past every tiny model's local window."""
    return [(row["query"], doc) for row in trec_rag[2:5] for doc in row["documents"][:5]]


# The Qwen3-Reranker model card's code, as published (prompt, truncation, left padding, scores).
CARD_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
               "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def card_format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = "Given a web search query, retrieve relevant passages that answer the query"
    return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
        instruction=instruction, query=query, doc=doc)


@pytest.fixture(scope="module")
def card(family_model):
    """(pairs, max_length, instruction) -> (logit_yes - logit_no, P(yes), ids) by the model card's code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = family_model("qwen3")
    tokenizer = AutoTokenizer.from_pretrained(src, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    token_false_id, token_true_id = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)

    def score(pairs, max_length, instruction=None):
        texts = [card_format_instruction(instruction, q, d) for q, d in pairs]
        inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                           max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        ids = [list(row) for row in inputs["input_ids"]]
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        with torch.inference_mode():
            batch_scores = model(**inputs).logits[:, -1, :]
            batch_scores = torch.stack([batch_scores[:, token_false_id], batch_scores[:, token_true_id]], dim=1)
            batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1).double()
        return (batch_scores[:, 1] - batch_scores[:, 0]).numpy(), batch_scores[:, 1].exp().numpy(), ids

    return score


def _pytorch_logits(src, pairs, max_length):
    """An encoder cross-encoder's logits from transformers, its tokenizer pairing the texts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    with torch.inference_mode():
        enc = tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation="only_second",
                        max_length=max_length, padding=True, return_tensors="pt")
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0].double().numpy()


# -- the registry ---------------------------------------------------------------------------------

def test_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SourceError) as refused:
        export_model(folder, tmp_path / "out", kind="cross")
    message = str(refused.value)
    assert "\n" not in message and "'GPT2LMHeadModel' is not supported" in message
    for name in ("BertForSequenceClassification", "ModernBertForSequenceClassification",
                 "DebertaV2ForSequenceClassification", "Qwen3ForCausalLM"):
        assert name in message
    with pytest.raises(SourceError, match=r"'gpt2' is not supported as a bi-encoder.*'modernbert'"):
        export_model(folder, tmp_path / "out", kind="bi")


def test_every_family_names_real_fusion_rules_and_recipes():
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    from crossrank.export.families import FAMILIES
    from crossrank.kernels.quantize import RECIPES

    assert set(FAMILIES) == {"bert", "modernbert", "deberta-v2", "qwen3-yes-no"}
    for family in FAMILIES.values():
        assert family.fusion in MODEL_TYPES, family.name
        options = FusionOptions(family.fusion)
        assert all(isinstance(getattr(options, flag, None), bool) for flag in family.fusions_off), family.name
        assert set(family.int8_recipes) <= set(RECIPES), family.name


def test_family_options_are_checked_before_any_work(family_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"'fp16' is not available for the qwen3-yes-no family"):
        export_model(family_model("qwen3"), tmp_path / "out", kind="cross", precision="fp16")
    with pytest.raises(InvalidArgumentError, match=r"does not apply to the modernbert family"):
        export_model(family_model("modernbert"), tmp_path / "out", kind="cross", precision="int8",
                     int8_recipe="dynamic-pertensor-batchdependent-u8s8")
    with pytest.raises(SourceError, match=r"--template is for decoder rerankers"):
        export_model(family_model("modernbert"), tmp_path / "out", kind="cross", template="qwen3-reranker")
    with pytest.raises(SourceError, match=r"'nope' is neither a bundled template \['qwen3-reranker'\]"):
        export_model(family_model("qwen3"), tmp_path / "out", kind="cross", template="nope")
    assert not (tmp_path / "out").exists()


def test_template_errors_name_the_problem(family_model, tmp_path):
    from crossrank.export.prompts import load_template

    good = load_template("qwen3-reranker")
    for change, problem in (({"document": "{document} and more"}, "must end with its one field"),
                            ({"query": ["<Query>: {query} {colour}"]}, r"fields \['colour', 'query'\]"),
                            ({"default_instruction": None}, "needs 'query_without_instruction'"),
                            ({"yes_token": ""}, "needs 'yes_token'"),
                            ({"extra": 1}, "unknown key 'extra'")):
        path = tmp_path / "template.json"
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(SourceError, match=problem):
            load_template(path)
    path.write_text(json.dumps({**good, "yes_token": "Yes!"}))
    with pytest.raises(SourceError, match=r"the tokenizer has no token 'Yes!'"):
        export_model(family_model("qwen3"), tmp_path / "out", kind="cross", template=path)


# -- exports: fidelity and what the manifest records -------------------------------------------------

@pytest.mark.parametrize("family", FAMILY_MODELS)
def test_fp32_export_is_exact(family, family_artifact):
    name, inputs, fused_op = EXPECTED[family]
    manifest = _manifest(family_artifact(family))
    assert (manifest["family"], manifest["inputs"], manifest["activation"]) == (name, inputs, "sigmoid")
    assert manifest["fusions"].get(fused_op, 0) >= 1
    fid = manifest["fidelity"]
    assert fid["pairs"] == 32 and fid["passed"]
    assert fid["max_abs_diff"] <= 1e-4 and fid["batch_invariance_max_abs_diff"] <= TOLERANCE
    assert fid["reference_score_std"] > 0.3  # scores spread like a trained reranker's: the figures mean something
    if family == "qwen3":
        assert fid["prompt_ids_agreement"] == 1.0 and fid["max_abs_diff_probability"] <= 1e-5
        prompt = manifest["prompt"]
        assert prompt["name"] == "qwen3-reranker" and manifest["max_length"] == 8192
        assert prompt["default_instruction"].startswith("Given a web search query")
        assert {prompt["yes_token"], prompt["no_token"]} == {"yes", "no"}
    else:
        assert manifest["prompt"] is None


@pytest.mark.parametrize("family", FAMILY_MODELS)
def test_int8_export_holds_the_per_row_bar(family, family_artifact):
    manifest = _manifest(family_artifact(family, "int8"))
    assert manifest["quantization"]["name"] == "dynamic-perrow-u8s8-perchannel-rr"
    assert manifest["quantization"]["batch_invariant"]
    fid = manifest["fidelity"]
    assert fid["passed"] and fid["spearman"] >= 0.99 and fid["bar"].startswith("spearman")
    assert fid["batch_invariance_max_abs_diff"] <= TOLERANCE


def test_int8_below_the_family_bar_is_refused_with_the_figure(family_model, family_fidelity_data, tmp_path,
                                                              monkeypatch):
    from crossrank.export import families

    strict = dataclasses.replace(families.FAMILIES["deberta-v2"], bars={("cross", "int8"): ("spearman", ">=", 1.0)})
    monkeypatch.setitem(families.FAMILIES, "deberta-v2", strict)
    with pytest.raises(ExportError, match=r"below the fidelity bar: spearman = 0\.9\d+ \(bar: >= 1\)"):
        export_model(family_model("deberta-v2"), tmp_path / "out", kind="cross", precision="int8", quiet=True,
                     fidelity_data=family_fidelity_data)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["modernbert", "deberta-v2"])
def test_bi_encoder_of_the_family(family, family_artifact, family_model):
    """The same code carries the encoders' bi-encoders: mean pooling, L2-normalised, exact."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    artifact = family_artifact(family, "fp32", "bi")
    manifest = _manifest(artifact)
    assert (manifest["kind"], manifest["pooling"], manifest["fidelity"]["passed"]) == ("bi", "mean", True)
    assert manifest["fidelity"]["max_abs_diff"] <= 1e-4
    texts = ["ModernBERT alternates local and global attention.", "DeBERTa disentangles content and position " * 9]
    src = family_model(family, "bi")
    tokenizer = AutoTokenizer.from_pretrained(src)
    with torch.inference_mode():
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = AutoModel.from_pretrained(src).eval()(input_ids=enc["input_ids"],
                                                     attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).double()
        pooled = torch.nn.functional.normalize((hidden.double() * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert np.abs(crossrank.Embedder(artifact).embed(texts) - pooled).max() <= 1e-4


# -- the runtime on these artifacts ----------------------------------------------------------------

@pytest.mark.parametrize("family", ["modernbert", "deberta-v2"])
def test_encoder_reranker_scores_equal_pytorch(family, family_artifact, family_model, trec_pairs):
    reranker = crossrank.Reranker(family_artifact(family))
    want = _pytorch_logits(family_model(family), trec_pairs, reranker.max_length)
    assert np.abs(reranker.score(trec_pairs, raw_scores=True) - want).max() <= 1e-4


def test_decoder_scores_equal_the_model_card(family_artifact, card, trec_pairs):
    """crossrank's own pair building and right-padded batches against the card's left-padded PyTorch run."""
    reranker = crossrank.Reranker(family_artifact("qwen3"))
    logit, prob, card_ids = card(trec_pairs, reranker.max_length)
    assert np.abs(reranker.score(trec_pairs, raw_scores=True) - logit).max() <= 1e-4
    assert np.abs(reranker.score(trec_pairs) - prob).max() <= 1e-5  # sigmoid(l_yes - l_no) = softmax(...)[yes]
    tok = reranker.tokenizer
    rows = tok.pair_rows(tok.encode_queries([trec_pairs[0][0]]), np.zeros(5, np.int64),
                         tok.encode_documents([d for _, d in trec_pairs[:5]])[0])
    assert [r.tolist() for r in rows.ids] == card_ids[:5]


def test_decoder_truncates_the_document_and_keeps_the_suffix(family_artifact, card, trec_rag):
    reranker = crossrank.Reranker(family_artifact("qwen3"), max_length=256)
    tok = reranker.tokenizer
    long_doc = " ".join(d for row in trec_rag[5:8] for d in row["documents"])
    query = trec_rag[5]["query"]
    rows = tok.pair_rows(tok.encode_queries([query]), np.zeros(1, np.int64), tok.encode_documents([long_doc])[0])
    ids = rows.ids[0]
    suffix, query_ids = tok.template.suffix, tok.encode_queries([query])[0]
    assert len(ids) == 256
    assert ids[-len(suffix):].tolist() == suffix.tolist()  # the suffix is never cut
    start = len(tok.template.prefix)
    assert ids[start: start + len(query_ids)].tolist() == query_ids.tolist()  # nor the query part
    logit, _, card_ids = card([(query, long_doc)], 256)
    assert ids.tolist() == card_ids[0]  # the card's truncation: the body cut from its end
    assert abs(reranker.score([(query, long_doc)], raw_scores=True)[0] - logit[0]) <= 1e-4


def test_instruction_changes_the_score_exactly_as_in_pytorch(family_artifact, card, trec_pairs):
    reranker = crossrank.Reranker(family_artifact("qwen3"))
    assert reranker.accepts_instruction
    instruction = "Given a question, retrieve passages that contradict its premise"
    pairs = trec_pairs[:6]
    default = reranker.score(pairs, raw_scores=True)
    instructed = reranker.score(pairs, raw_scores=True, instruction=instruction)
    logit, _, _ = card(pairs, reranker.max_length, instruction)
    assert np.abs(instructed - logit).max() <= 1e-4
    assert np.abs(instructed - default).min() > 1e-4  # the instruction reached every pair
    ranked = reranker.rerank(pairs[0][0], [d for _, d in pairs[:5]], raw_scores=True, instruction=instruction)
    np.testing.assert_allclose(sorted(r.score for r in ranked), sorted(instructed[:5]), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="instruction is empty"):
        reranker.rerank("query", ["doc"], instruction="  ")


def test_models_without_an_instruction_refuse_one(family_artifact):
    reranker = crossrank.Reranker(family_artifact("modernbert"))
    assert not reranker.accepts_instruction
    with pytest.raises(InvalidArgumentError, match="instruction: this model takes none"):
        reranker.rerank("query", [], instruction="Find passages")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("family", FAMILY_MODELS)
def test_score_is_independent_of_batch_mates(family, precision, family_artifact, trec_rag):
    """Alone, among short mates at every position, beside a mate that fills the window, as copies."""
    reranker = crossrank.Reranker(family_artifact(family, precision), batch_tokens=ONE_CALL, max_length=512)
    query = trec_rag[8]["query"]
    targets = trec_rag[8]["documents"][:2]
    pool = sorted({d for row in trec_rag[9:40] for d in row["documents"]}, key=len)
    short, long_mate = pool[:6], " ".join(pool[-4:])
    worst = 0.0
    for target in targets:
        alone = reranker.score([(query, target)], raw_scores=True)[0]
        together = []
        for docs, position in [(short[:p] + [target] + short[p:], p) for p in (0, 3, 6)] + \
                              [([long_mate, target], 1), ([target, long_mate], 0)]:
            together.append(reranker.score([(query, d) for d in docs], raw_scores=True)[position])
        together += list(reranker.score([(query, target)] * 6 + [(query, long_mate)], raw_scores=True)[:6])
        worst = max(worst, float(np.max(np.abs(np.asarray(together) - alone))))
    assert worst <= TOLERANCE, f"{family} {precision}: a logit moved by {worst:.3g} with its batch mates"


def test_a_manifest_with_a_broken_prompt_is_refused(family_artifact, tmp_path):
    import shutil

    from crossrank.artifact import ArtifactError, load_artifact

    copy = tmp_path / "artifact"
    shutil.copytree(family_artifact("qwen3"), copy)
    manifest = _manifest(copy)
    manifest["prompt"]["document"] = "<Document>: {document}{query}"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"'prompt' 'document' must end with its one field"):
        load_artifact(copy)
