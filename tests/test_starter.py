"""The shipped starter reranker (models/starter-reranker): folder contract, export, and quality on
real Semanlink test data, plus the pieces of its training recipe that run without training."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from crossrank.evaluation.datasets import load_semanlink, semanlink_queries, tag_split
from crossrank.front.cli import main

STARTER = Path(__file__).resolve().parent.parent / "models" / "starter-reranker"
# A test-split tag and one of its documents: never trained on, never used to choose a checkpoint.
KNOWN_QUERY = "Boosting"
KNOWN_DOCUMENT = "https://quantdare.com/what-is-the-difference-between-bagging-and-boosting/"


# starter_int8: the session fixture in conftest.py (exported once, shared with the server tests)


@pytest.fixture(scope="module")
def reranker(starter_int8):
    from crossrank.reranker import Reranker

    return Reranker(starter_int8)


def test_shipped_folder_is_a_standard_small_hf_model():
    config = json.loads((STARTER / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384
    assert len(config["id2label"]) == 1
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "README.md",
                 "training_log.json"):
        assert (STARTER / name).is_file(), name
    size = sum(f.stat().st_size for f in STARTER.iterdir())
    assert size <= 50 * 2**20, f"models/starter-reranker holds {size / 2**20:.1f} MiB (limit 50)"
    card = (STARTER / "README.md").read_text()
    for needed in ("Apache-2.0", "MIT", "make starter-model", "tag_split", "nDCG@10"):
        assert needed in card, f"model card does not mention {needed!r}"
    log = json.loads((STARTER / "training_log.json").read_text())
    chosen = log["epochs"][log["chosen_epoch"] - 1]
    assert chosen["dev_ndcg@10"] == max(e["dev_ndcg@10"] for e in log["epochs"])


def test_int8_export_meets_the_trained_model_fidelity_bar(starter_int8):
    manifest = json.loads((starter_int8 / "manifest.json").read_text())
    fidelity = manifest["fidelity"]
    assert fidelity["spearman"] >= 0.99, fidelity
    assert manifest["activation"] == "sigmoid"


def _relevant_and_others(query, n_others: int, seed: int):
    documents, _ = load_semanlink()
    by_id = {d.id: d for d in documents}
    others = [d for d in documents if d.id not in query.relevant]
    random.Random(seed).shuffle(others)
    return [by_id[d] for d in sorted(query.relevant)], others[:n_others]


def test_known_relevant_test_pair_outranks_irrelevant_documents(reranker):
    query = next(q for q in semanlink_queries("test") if q.text == KNOWN_QUERY)
    relevant, others = _relevant_and_others(query, 20, seed=0)
    known = next(d for d in relevant if d.id == KNOWN_DOCUMENT)
    ranked = reranker.rerank(query.text, [known.text] + [d.text for d in others])
    assert ranked[0].index == 0, f"{query.text!r}: the relevant document came {[r.index for r in ranked].index(0) + 1}th"


def relevant_vs_random_auc(reranker) -> float:
    """Over 40 test tags (up to 3 relevant and 5 random documents each): the share of (relevant,
    random) pairs in which the relevant document scores higher."""
    queries = [q for q in semanlink_queries("test") if len(q.relevant) >= 2][:40]
    wins = total = 0
    for seed, query in enumerate(queries):
        relevant, others = _relevant_and_others(query, 5, seed)
        scores = reranker.score([(query.text, d.text) for d in relevant[:3] + others])
        positive, negative = np.array(scores[: len(relevant[:3])]), np.array(scores[len(relevant[:3]):])
        wins += (positive[:, None] > negative[None, :]).sum()
        total += positive.size * negative.size
    return wins / total


def test_relevant_documents_score_higher_than_random_ones_on_test_tags(reranker):
    """Over 40 test tags: a relevant document beats a random one in most pairs (AUC), far above 0.5."""
    auc = relevant_vs_random_auc(reranker)
    assert auc >= 0.85, f"relevant-vs-random AUC {auc:.3f}"


def test_eval_command_reranks_a_small_slice(capsys, tmp_path, bi_int8, starter_int8):
    from crossrank.embedder import Embedder
    from crossrank.index import Index

    queries = [q for q in semanlink_queries("test") if 2 <= len(q.relevant) <= 8][:6]
    documents, _ = load_semanlink()
    wanted = set().union(*(q.relevant for q in queries))
    picked = [d for d in documents if d.id in wanted] + [d for d in documents if d.id not in wanted][:150]
    Index.build(Embedder(bi_int8), [d.text for d in picked], [d.id for d in picked], progress=False).save(tmp_path / "ix")
    assert main(["eval", "--index", str(tmp_path / "ix"), "--reranker", str(starter_int8), "--split", "test",
                 "--limit", "6", "--k", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == 6 and set(report) >= {"first_stage", "reranked"}
    first, reranked = report["first_stage"], report["reranked"]
    assert all(0.0 <= v <= 1.0 for v in [*first.values(), *reranked.values()])
    # reranking reorders the same 30 candidates: what is found among them cannot change
    assert reranked["recall@30"] == pytest.approx(first["recall@30"])
    assert reranked != first


# -- the training recipe's data preparation (no training here) ---------------------------------


def test_training_groups_hold_one_positive_and_only_negatives():
    from crossrank.export.starter import parse_args, training_groups

    args = parse_args(["--hard", "3", "--random", "2", "--max-positives-per-tag", "2"])
    relevant = frozenset({"a", "b", "c"})
    query = SimpleNamespace(text="label", alt_texts=("other label",), relevant=relevant)
    doc_ids = [chr(ord("a") + i) for i in range(26)]
    first_stage = ["b", "x", "a", "y", "z"]  # positives mixed into the mined list
    groups = training_groups([query], [first_stage], doc_ids, args, random.Random(0))
    assert len(groups) == 2
    for text, positive, negatives in groups:
        assert text in ("label", "other label") and positive in relevant
        assert len(negatives) == 5 and len(set(negatives)) == 5
        assert not set(negatives) & relevant
        assert set(negatives[:3]) <= {"x", "y", "z"}
    again = training_groups([query], [first_stage], doc_ids, args, random.Random(0))
    assert again == groups  # fixed seed, same groups


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--hard", "0", "--random", "0"], "at least one negative"),
    (["--lr", "2"], "--lr must be in (0, 1), got 2.0"),
])
def test_training_arguments_are_checked(capsys, argv, message):
    from crossrank.export.starter import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_split_keeps_test_tags_out_of_training():
    train = {q.tag for q in semanlink_queries("train")}
    assert not train & {q.tag for q in semanlink_queries("test")}
    assert all(tag_split(t) == "train" for t in train)
