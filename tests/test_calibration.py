"""Calibrated scores (issue 23): the two maps and their choice (numpy, against a known curve), the
shipped 6-layer starter (int8) calibrated with ``crossrank calibrate`` on Semanlink dev tags and
checked on test tags, the artifact left untouched, rankings unchanged, and a calibration file
refused by any artifact but its own.

Pairs here are each tag's own documents and as many documents sharing none of its tags (the
benchmark, benchmarks/calibration_report.py, uses first-stage candidates and every rung).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import crossrank
from crossrank.artifact import load_artifact, sha256_file
from crossrank.calibration import CALIBRATION_FILE, Calibration, CalibrationError, read_calibration
from crossrank.evaluation.calibration import (LabelledPairs, brier_score, expected_calibration_error, fit_calibration,
                                              fit_isotonic, fit_platt)
from crossrank.evaluation.datasets import load_semanlink, semanlink_queries
from crossrank.front.cli import main

TAGS = 24           # tags per split
PER_TAG = 4         # relevant documents per tag, and as many irrelevant ones


def tag_pairs(split: str) -> LabelledPairs:
    """Each of the split's first TAGS tags (with >= PER_TAG documents): PER_TAG of its documents
    (label 1) and PER_TAG documents carrying none of its tags, picked by a seeded generator (label 0)."""
    documents, _ = load_semanlink()
    by_id = {d.id: d for d in documents}
    generator = np.random.default_rng(7)
    queries, texts, labels, groups = [], [], [], []
    tags = [t for t in semanlink_queries(split) if len(t.relevant) >= PER_TAG][:TAGS]
    for number, tag in enumerate(tags):
        relevant = sorted(tag.relevant)[:PER_TAG]
        others = []
        while len(others) < PER_TAG:
            doc = documents[int(generator.integers(len(documents)))]
            if tag.tag not in doc.tags and doc.id not in others:
                others.append(doc.id)
        for doc_id, label in [(d, 1.0) for d in relevant] + [(d, 0.0) for d in others]:
            queries.append(tag.text)
            texts.append(by_id[doc_id].text)
            labels.append(label)
            groups.append(number)
    return LabelledPairs(queries, texts, np.asarray(labels), np.asarray(groups), f"semanlink {split} test pairs")


def write_jsonl(pairs: LabelledPairs, path) -> None:
    path.write_text("".join(json.dumps({"query": q, "document": d, "label": int(y)}) + "\n"
                            for q, d, y in zip(pairs.queries, pairs.documents, pairs.labels)))


# -- the maps, on a known curve (numpy only) ---------------------------------------------------------

def synthetic(n: int = 20000, seed: int = 0):
    generator = np.random.default_rng(seed)
    z = generator.normal(0.0, 2.0, n)
    truth = 1.0 / (1.0 + np.exp(-(1.5 * z - 0.8)))
    return z, (generator.random(n) < truth).astype(np.float64), truth


def test_platt_recovers_a_logistic_curve():
    z, y, _ = synthetic()
    fitted = fit_platt(z, y)
    assert abs(fitted["a"] - 1.5) < 0.08 and abs(fitted["b"] + 0.8) < 0.08, fitted


def test_isotonic_is_monotone_keeps_the_mean_and_follows_the_curve():
    z, y, truth = synthetic()
    fitted = fit_isotonic(z, y)
    assert np.all(np.diff(fitted["x"]) > 0) and np.all(np.diff(fitted["y"]) >= 0)
    calibration = Calibration("isotonic", fitted, "0" * 64)
    predicted = calibration.apply(z)
    assert np.all(np.diff(predicted[np.argsort(z)]) >= 0)  # monotone in the raw score
    assert abs(predicted.mean() - y.mean()) < 0.01
    assert np.mean(np.abs(predicted - truth)) < 0.04
    pooled = fit_isotonic(np.asarray([0.0, 1.0, 2.0, 3.0]), np.asarray([0.0, 1.0, 0.0, 1.0]))
    assert pooled == {"x": [0.0, 1.5, 3.0], "y": [0.0, 0.5, 1.0]}  # the violating middle pair pooled


def test_figures_and_the_choice_between_the_maps():
    assert expected_calibration_error(np.asarray([0.05, 0.05, 0.95, 0.95]), np.asarray([0, 0, 1, 1])) == \
        pytest.approx(0.05)
    assert brier_score(np.asarray([0.0, 1.0]), np.asarray([1, 1])) == 0.5
    z, y, _ = synthetic(4000, seed=1)
    pairs = LabelledPairs(["q"] * len(z), ["d"] * len(z), y, np.arange(len(z)) // 40, "synthetic")
    calibration = fit_calibration(z, pairs, "a" * 64)
    held_out = calibration.selection["held_out"]
    assert calibration.method == min(held_out, key=lambda m: held_out[m]["brier"])
    assert held_out["platt"]["ece"] < calibration.selection["sigmoid"]["ece"]  # the raw sigmoid is off the curve
    assert calibration.data["pairs"] == 4000 and calibration.data["queries"] == 100
    assert fit_calibration(z, pairs, "a" * 64, method="isotonic").method == "isotonic"


# -- the shipped starter, through the command line ----------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(starter_int8, tmp_path_factory):
    """A copy of the starter int8 artifact calibrated on dev-tag pairs with ``crossrank calibrate``,
    and the sha256 of its files before."""
    folder = tmp_path_factory.mktemp("calibrated") / "starter-int8"
    shutil.copytree(starter_int8, folder)
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    pairs = tmp_path_factory.mktemp("pairs") / "dev.jsonl"
    write_jsonl(tag_pairs("dev"), pairs)
    assert main(["calibrate", str(folder), "--pairs", str(pairs), "--quiet"]) == 0
    return folder, before, pairs


def test_calibrate_writes_beside_the_artifact_and_alters_nothing(calibrated, capsys):
    folder, before, pairs = calibrated
    after = {p.name: sha256_file(p) for p in folder.iterdir() if p.name != CALIBRATION_FILE}
    assert after == before  # model.onnx, tokenizer.json, manifest.json: the same bytes
    load_artifact(folder)  # still verifies against its manifest
    calibration = read_calibration(folder / CALIBRATION_FILE)
    assert calibration.artifact_sha256 == load_artifact(folder).sha256
    assert calibration.data["pairs"] == TAGS * 2 * PER_TAG and calibration.data["positives"] == TAGS * PER_TAG
    assert calibration.data["sha256"] == tag_pairs("dev").sha256
    assert main(["calibrate", str(folder), "--pairs", str(pairs), "--quiet"]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the test tags are for reporting, never for fitting
        main(["calibrate", str(folder), "--split", "test"])
    assert "invalid choice: 'test'" in capsys.readouterr().err


def test_calibrated_scores_keep_every_ranking_and_improve_ece_on_test_tags(calibrated):
    folder, _, _ = calibrated
    reranker = crossrank.Reranker(folder)
    plain = crossrank.Reranker(folder, calibration=False)
    assert reranker.scores == "calibrated" and plain.scores == "sigmoid"
    assert reranker.describe()["calibration"]["method"] == reranker.calibration.method
    test = tag_pairs("test")
    pairs = list(zip(test.queries, test.documents))
    raw = reranker.score(pairs, raw_scores=True)
    np.testing.assert_array_equal(raw, plain.score(pairs, raw_scores=True))  # raw scores still there
    calibrated_scores = reranker.score(pairs)
    np.testing.assert_array_equal(calibrated_scores, reranker.calibration.apply(raw))
    assert expected_calibration_error(calibrated_scores, test.labels) < expected_calibration_error(
        plain.score(pairs), test.labels)
    for group in range(TAGS):  # the same order, query by query
        inside = [i for i in range(len(pairs)) if test.groups[i] == group]
        query, documents = test.queries[inside[0]], [test.documents[i] for i in inside]
        with_map = reranker.rerank(query, documents)
        assert [r.index for r in with_map] == [r.index for r in plain.rerank(query, documents)]
        assert [r.score for r in with_map] == sorted((r.score for r in with_map), reverse=True)


def test_a_calibration_file_of_another_artifact_is_refused(calibrated, tiny_cross, tmp_path):
    folder, _, _ = calibrated
    other = tmp_path / "other"
    shutil.copytree(tiny_cross, other)
    shutil.copy2(folder / CALIBRATION_FILE, other / CALIBRATION_FILE)
    with pytest.raises(CalibrationError, match="fitted for another artifact"):
        crossrank.Reranker(other)
    with pytest.raises(CalibrationError, match="fitted for another artifact"):
        crossrank.Reranker(tiny_cross, calibration=folder / CALIBRATION_FILE)
    assert crossrank.Reranker(other, calibration=False).calibration is None
    assert crossrank.Reranker(tiny_cross, calibration=False).scores == "sigmoid"
    # its own file, given by path, is used
    assert crossrank.Reranker(folder, calibration=folder / CALIBRATION_FILE).scores == "calibrated"


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(method="spline"), "'method'"),
    (lambda d: d.update(artifact_sha256="abc"), "sha256"),
    (lambda d: d.update(method="isotonic", parameters={"x": [0.0, 1.0], "y": [0.9, 0.1]}), "non-decreasing"),
    (lambda d: d.update(method="platt", parameters={"a": -1.0, "b": 0.0}), "a must be > 0"),
    (lambda d: d.update(extra=1), "unknown key"),
])
def test_a_malformed_calibration_file_is_refused_naming_it(calibrated, tmp_path, change, words):
    folder, _, _ = calibrated
    document = json.loads((folder / CALIBRATION_FILE).read_text())
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CalibrationError, match=words) as caught:
        crossrank.Reranker(folder, calibration=path)
    assert str(path) in str(caught.value)
