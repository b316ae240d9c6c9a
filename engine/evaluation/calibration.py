"""Fitting a reranker's calibration (``crossrank calibrate``; applied in the core by
``crossrank.calibration``), and the figures that judge one.

Data: labelled (query, document, label) pairs, label 1 = relevant. From Semanlink, the pairs a
reranker meets in use: each tag's label as the query, its first-stage candidates (the top ``k``
of an index) as the documents, relevant = the document carries the tag. Or a JSONL file of
``{"query", "document", "label"}`` lines.

Fitting: both maps (isotonic regression by pool-adjacent-violators, with linear interpolation
between the fitted points; Platt's logistic fit with his smoothed targets) are scored on held-out
data: the pairs split into ``folds`` groups by query, each group predicted by maps fitted on the
others. The map with the lower held-out Brier score is kept, refitted on all pairs. Only numpy.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrank.calibration import METHODS, Calibration
from crossrank.errors import InvalidArgumentError, check_choice, check_int
from crossrank.evaluation.datasets import read_jsonl

CALIBRATION_BINS = 10     # equal-width probability bins of the expected calibration error
HELD_OUT_FOLDS = 5


@dataclass(frozen=True)
class LabelledPairs:
    """Pairs with 0/1 labels; ``groups[i]`` numbers pair i's query (held-out folds split by query)."""

    queries: list[str]
    documents: list[str]
    labels: np.ndarray       # float64, 0 or 1
    groups: np.ndarray       # int64
    source: str              # what they are, in words

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sha256(self) -> str:
        """Identity of the data: sha256 of the pairs and labels, one canonical JSON line each."""
        digest = hashlib.sha256()
        for query, document, label in zip(self.queries, self.documents, self.labels):
            digest.update(json.dumps([query, document, int(label)], ensure_ascii=False).encode("utf-8") + b"\n")
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "pairs": len(self),
                "positives": int(self.labels.sum()), "queries": int(len(np.unique(self.groups)))}


def read_labelled_pairs(path: str | Path) -> LabelledPairs:
    """A JSONL file of ``{"query": str, "document": str, "label": 0 | 1 | true | false}`` lines."""
    queries, documents, labels, group_of = [], [], [], {}
    for where, _, row in read_jsonl(path, "labelled pairs file", ("query", "document", "label")):
        query, document, label = row["query"], row["document"], row["label"]
        if not isinstance(query, str) or not query.strip() or not isinstance(document, str):
            raise InvalidArgumentError(f'{where}: "query" must be a non-empty string and "document" a string')
        if label not in (0, 1) or isinstance(label, float):
            raise InvalidArgumentError(f'{where}: "label" must be 0, 1, true or false, got {label!r:.40}')
        queries.append(query)
        documents.append(document)
        labels.append(float(label))
        group_of.setdefault(query, len(group_of))
    pairs = LabelledPairs(queries, documents, np.asarray(labels), np.asarray([group_of[q] for q in queries]),
                          f"labelled pairs {Path(path).name}")
    _check_both_labels(pairs)
    return pairs


def semanlink_pairs(pipeline, split: str, k: int, limit: int | None = None, batch: int = 32) -> LabelledPairs:
    """Each ``split`` tag's label as a query, its top ``k`` first-stage candidates from
    ``pipeline`` (a first-stage ``Pipeline`` over the Semanlink index) as documents, labelled 1 when
    the document carries the tag. ``limit``: the first that many tags."""
    from crossrank.evaluation.datasets import semanlink_queries

    tags = semanlink_queries(split)[:limit]
    queries, documents, labels, groups = [], [], [], []
    for start in range(0, len(tags), batch):
        part = tags[start: start + batch]
        for number, (tag, result) in enumerate(zip(part, pipeline.search_many([t.text for t in part], k=k,
                                                                                 top_n=None)), start=start):
            for hit in sorted(result.hits, key=lambda h: h.first_stage_rank):
                queries.append(tag.text)
                documents.append(hit.document)
                labels.append(float(hit.id in tag.relevant))
                groups.append(number)
    pairs = LabelledPairs(queries, documents, np.asarray(labels), np.asarray(groups, dtype=np.int64),
                          f"semanlink {split} tags (cherche==2.2.1), top {k} first-stage candidates each")
    _check_both_labels(pairs)
    return pairs


def _check_both_labels(pairs: LabelledPairs) -> None:
    positives = int(pairs.labels.sum())
    if positives == 0 or positives == len(pairs):
        raise InvalidArgumentError(f"{pairs.source}: {len(pairs)} pairs, {positives} relevant: a calibration needs "
                                   f"both relevant and irrelevant pairs")


# -- the two maps ---------------------------------------------------------------------------------

def fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Isotonic regression of labels on logits (pool adjacent violators); returns the fitted points
    ``{"x": logits, strictly increasing, "y": P(relevant), non-decreasing}`` (each point a block's
    mean logit and mean label), to be interpolated linearly."""
    order = np.argsort(logits, kind="stable")
    x, y = np.asarray(logits, dtype=np.float64)[order], np.asarray(labels, dtype=np.float64)[order]
    distinct, first = np.unique(x, return_index=True)  # ties: one point, their mean label
    weights = np.diff(np.append(first, len(x))).astype(np.float64)
    means = np.add.reduceat(y, first) / weights
    blocks: list[list[float]] = []  # [sum of x * w, sum of y * w, w]
    for xv, yv, w in zip(distinct, means, weights):
        blocks.append([xv * w, yv * w, w])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            sx, sy, sw = blocks.pop()
            blocks[-1] = [blocks[-1][0] + sx, blocks[-1][1] + sy, blocks[-1][2] + sw]
    return {"x": [b[0] / b[2] for b in blocks], "y": [min(1.0, max(0.0, b[1] / b[2])) for b in blocks]}


def fit_platt(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> dict:
    """Platt scaling: ``P = 1 / (1 + exp(-(a * logit + b)))`` fitted by Newton's method with a
    backtracking line search on the log-loss (Lin, Lin and Weng's version of Platt's fit), with
    Platt's targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)) against overfitting."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    positives, negatives = y.sum(), len(y) - y.sum()
    target = np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(target * np.logaddexp(0, -s) + (1 - target) * np.logaddexp(0, s)))

    a, b = 0.0, float(np.log((positives + 1) / (negatives + 1)))
    current = loss(a, b)
    for _ in range(iterations):
        p = 0.5 * (1 + np.tanh(0.5 * (a * z + b)))  # the sigmoid, without overflow
        w = np.maximum(p * (1 - p), 1e-12)
        gradient = np.array([np.dot(p - target, z), np.sum(p - target)])
        if np.abs(gradient).max() < 1e-8:
            break
        hessian = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), w.sum()]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-10 and loss(a - size * step[0], b - size * step[1]) > current + 1e-4 * size * gradient @ -step:
            size /= 2
        if size <= 1e-10:
            break
        a, b = a - size * step[0], b - size * step[1]
        current = loss(a, b)
    if not a > 0:
        raise InvalidArgumentError(f"the Platt fit has slope {a:.3g} <= 0: on these pairs higher scores do not mean "
                                   f"more relevant; check the labels")
    return {"a": float(a), "b": float(b)}


FITS = {"isotonic": fit_isotonic, "platt": fit_platt}


# -- figures ----------------------------------------------------------------------------------------

def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE: over ``bins`` equal-width probability bins, the pair-weighted mean of
    |mean predicted probability - share relevant|."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(p[inside].mean() - y[inside].mean())
    return float(total / len(p))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between the predicted probability and the 0/1 label."""
    return float(np.mean((np.asarray(probabilities, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


def precision_at(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, int]:
    """(share relevant among pairs scored >= threshold, how many pairs that is); nan when none."""
    kept = np.asarray(probabilities) >= threshold
    count = int(kept.sum())
    return (float(np.asarray(labels)[kept].mean()) if count else float("nan")), count


def figures(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    return {"ece": expected_calibration_error(probabilities, labels), "brier": brier_score(probabilities, labels)}


# -- choosing and fitting -----------------------------------------------------------------------------

def held_out_figures(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, method: str,
                     folds: int = HELD_OUT_FOLDS) -> dict:
    """ECE and Brier of ``method``'s out-of-fold predictions (folds by query group)."""
    folds = min(check_int(folds, "folds", 2), len(np.unique(groups)))
    fold_of = np.unique(groups, return_inverse=True)[1] % folds
    predicted = np.empty(len(labels), dtype=np.float64)
    for fold in range(folds):
        test = fold_of == fold
        train = ~test
        if labels[train].min() == labels[train].max():
            raise InvalidArgumentError(f"held-out fold {fold} leaves training pairs of one label only: give more "
                                       f"queries")
        parameters = FITS[method](logits[train], labels[train])
        predicted[test] = Calibration(method, parameters, "0" * 64).apply(logits[test])
    return figures(predicted, labels)


def fit_calibration(logits: np.ndarray, pairs: LabelledPairs, artifact_sha256: str, method: str = "auto",
                    folds: int = HELD_OUT_FOLDS) -> Calibration:
    """The calibration of a reranker whose raw scores of ``pairs`` are ``logits``: ``method``
    "auto" keeps the map with the lower held-out Brier score (``selection`` records both maps'
    held-out figures and the raw sigmoid's), "isotonic" or "platt" fits that one."""
    check_choice(method, "method", ("auto",) + METHODS)
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) != len(pairs):
        raise InvalidArgumentError(f"{len(logits)} scores for {len(pairs)} pairs")
    held_out = {name: held_out_figures(logits, pairs.labels, pairs.groups, name, folds) for name in METHODS}
    chosen = min(METHODS, key=lambda name: held_out[name]["brier"]) if method == "auto" else method
    selection = {"rule": "lower held-out Brier score" if method == "auto" else "given", "folds": folds,
                 "held_out": held_out, "sigmoid": figures(1.0 / (1.0 + np.exp(-logits)), pairs.labels)}
    return Calibration(chosen, FITS[chosen](logits, pairs.labels), artifact_sha256, pairs.describe(), selection,
                       time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def raw_scores(reranker, pairs: LabelledPairs, batch: int = 256, progress: bool = True) -> np.ndarray:
    """The reranker's raw scores (logits) of every pair, with a progress bar."""
    from crossrank.progress import progress_bar

    out = np.empty(len(pairs), dtype=np.float64)
    bar = progress_bar(total=len(pairs), unit="pair", desc=f"scoring {Path(str(reranker.path)).name}",
                       disable=not progress)
    for start in range(0, len(pairs), batch):
        stop = min(start + batch, len(pairs))
        out[start:stop] = reranker.score(list(zip(pairs.queries[start:stop], pairs.documents[start:stop])),
                                         raw_scores=True)
        bar.update(stop - start)
    bar.close()
    return out


__all__ = ["CALIBRATION_BINS", "LabelledPairs", "brier_score", "expected_calibration_error", "fit_calibration",
           "fit_isotonic", "fit_platt", "held_out_figures", "precision_at", "raw_scores", "read_labelled_pairs",
           "semanlink_pairs"]
