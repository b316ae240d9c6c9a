"""Calibration of the reranker ladder (2, 4, 6 layers; fp32 and int8) on the Semanlink test tags
-> benchmarks/results/calibration.md/json.

For each rung: its raw scores of the dev tags' pairs and of the test tags' pairs (each tag's label
as the query, its top ``k`` first-stage candidates as documents, relevant = carries the tag; the
same candidates for every rung), a calibration fitted on the dev pairs only
(``crossrank.evaluation.calibration.fit_calibration``, what ``crossrank calibrate`` runs: isotonic
and Platt compared on held-out dev queries, the lower Brier kept), then on the test pairs:

- expected calibration error (10 equal-width bins) and Brier score, before (the manifest's sigmoid
  of the logit, what a Reranker returns without a calibration) and after;
- precision at fixed thresholds (share relevant among the pairs scored >= t), before and after,
  and its spread across rungs (max - min): the point of calibrating is that one threshold means
  about the same precision on every rung;
- the share relevant among the pairs scored within +-0.05 of each threshold (what a score of t
  means: calibrated, about t on every rung);
- a check that calibration changed no ranking (per test query, the order by calibrated score
  equals the order by raw score, ties broken by the raw score as the Reranker does).

Nothing is written into the artifact folders (the calibrations are fitted in memory; ``crossrank
calibrate`` is the command that stores one).

    python benchmarks/calibration_report.py [--k 20] [--dev-limit N] [--test-limit N] [--thresholds 0.3,0.5,0.7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ladder_report import MODELS, PRECISIONS, layers_of, machine  # noqa: E402
from starter_report import RESULTS, ROOT, write_report  # noqa: E402

from crossrank.evaluation.calibration import (figures, fit_calibration, precision_at, raw_scores,  # noqa: E402
                                              semanlink_pairs)
from crossrank.reranker import sigmoid  # noqa: E402


def same_rankings(raw: np.ndarray, calibrated: np.ndarray, groups: np.ndarray) -> bool:
    """Per query, sorting by (calibrated, raw) descending gives the order sorting by raw gives."""
    for group in np.unique(groups):
        inside = np.flatnonzero(groups == group)
        by_raw = inside[np.argsort(-raw[inside], kind="stable")]
        by_calibrated = inside[np.lexsort((-raw[inside], -calibrated[inside]))]
        if not np.array_equal(by_raw, by_calibrated):
            return False
    return True


BAND = 0.05


def band_share(probabilities: np.ndarray, labels: np.ndarray, t: float) -> dict:
    """Share relevant among the pairs scored in [t - BAND, t + BAND) (nan when none), and how many."""
    inside = (probabilities >= t - BAND) & (probabilities < t + BAND)
    count = int(inside.sum())
    return {"share": float(labels[inside].mean()) if count else float("nan"), "pairs": count}


def before_after_table(rows: list[dict], thresholds: list[float], key: str, figure: str) -> list[str]:
    """A Markdown table, a row per rung, a column per threshold: ``row[key_before]`` -> ``row[key_after]``."""
    lines = ["| rung | " + " | ".join(f"t = {t}" for t in thresholds) + " |", "|---" * (len(thresholds) + 1) + "|"]
    for row in rows:
        cells = []
        for t in thresholds:
            b, a = row[f"{key}_before"][str(t)], row[f"{key}_after"][str(t)]
            cells.append(f"{b[figure]:.3f} ({b['pairs']}) -> {a[figure]:.3f} ({a['pairs']})")
        lines.append(f"| {row['layers']} layers {row['precision']} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    thresholds = report["thresholds"]
    rows = report["rows"]
    lines = [f"Fitted on the Semanlink **dev** tags ({report['dev']['queries']} queries, {report['dev']['pairs']} "
             f"pairs, {report['dev']['positives']} relevant), reported on the **test** tags ({report['test']['queries']} "
             f"queries, {report['test']['pairs']} pairs, {report['test']['positives']} relevant): each tag's top "
             f"{report['k']} first-stage candidates (MiniLM int8 + usearch), the same for every rung.", "",
             "| rung | precision | kept map (held-out dev Brier: isotonic / platt) | ECE before | ECE after | "
             "Brier before | Brier after | rankings unchanged |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        held = row["selection"]["held_out"]
        lines.append(f"| {row['layers']} layers | {row['precision']} | {row['method']} ({held['isotonic']['brier']:.4f} / "
                     f"{held['platt']['brier']:.4f}) | {row['before']['ece']:.4f} | {row['after']['ece']:.4f} | "
                     f"{row['before']['brier']:.4f} | {row['after']['brier']:.4f} | "
                     f"{'yes' if row['same_rankings'] else 'NO'} |")
    lines += ["", "Precision at a fixed threshold on the test pairs (share relevant among pairs scored >= t; "
              "pairs kept in brackets), before -> after:", ""]
    lines += before_after_table(rows, thresholds, "precision", "precision")
    spread = report["spread"]
    lines.append("| **spread across rungs** (max - min) | " + " | ".join(
        f"{spread['before'][str(t)]:.3f} -> {spread['after'][str(t)]:.3f}" for t in thresholds) + " |")
    lines += ["", f"What a score of t means: the share relevant among the test pairs scored within +-{BAND} of t "
              "(pairs in brackets), before -> after:", ""]
    lines += before_after_table(rows, thresholds, "band", "share")
    improved = all(row["after"]["ece"] < row["before"]["ece"] for row in rows)
    lines += ["", f"ECE on the test tags improves for every rung: **{'yes' if improved else 'NO'}**.",
              "", f"Machine: {report['machine']}; load average {report['load_average']}; {report['seconds']:.0f} s. "
              f"Reproduce: `{report['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="export and index cache")
    parser.add_argument("--k", type=int, default=20, help="first-stage candidates per tag (default 20)")
    parser.add_argument("--dev-limit", type=int, default=None, help="only the first N dev tags (smoke runs)")
    parser.add_argument("--test-limit", type=int, default=None, help="only the first N test tags (smoke runs)")
    parser.add_argument("--thresholds", default="0.3,0.5,0.7", help="fixed thresholds (default 0.3,0.5,0.7)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for calibration.md / calibration.json")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    started = time.perf_counter()

    from crossrank.embedder import Embedder
    from crossrank.export import ensure_artifact
    from crossrank.export.starter import first_stage
    from crossrank.pipeline import Pipeline
    from crossrank.reranker import Reranker

    artifacts = Path(args.artifacts)
    pipeline = Pipeline(Embedder(artifacts / "embedder-int8"), first_stage(artifacts))
    dev = semanlink_pairs(pipeline, "dev", args.k, args.dev_limit)
    test = semanlink_pairs(pipeline, "test", args.k, args.test_limit)
    rows = []
    for model in sorted(MODELS, key=layers_of):
        for precision in PRECISIONS:
            artifact, _ = ensure_artifact(model, artifacts / f"{model.name}-{precision}", "cross", precision)
            reranker = Reranker(artifact.path, calibration=False)
            dev_logits, test_logits = raw_scores(reranker, dev), raw_scores(reranker, test)
            calibration = fit_calibration(dev_logits, dev, artifact.sha256)
            before = sigmoid(test_logits.astype(np.float32)).astype(np.float64)
            after = calibration.apply(test_logits).astype(np.float64)
            rows.append({"model": model.name, "layers": layers_of(model), "precision": precision,
                         "artifact": str(artifact.path), "method": calibration.method,
                         "parameters": calibration.parameters, "selection": calibration.selection,
                         "before": figures(before, test.labels), "after": figures(after, test.labels),
                         "precision_before": {str(t): dict(zip(("precision", "pairs"), precision_at(before, test.labels, t)))
                                              for t in thresholds},
                         "precision_after": {str(t): dict(zip(("precision", "pairs"), precision_at(after, test.labels, t)))
                                             for t in thresholds},
                         "band_before": {str(t): band_share(before, test.labels, t) for t in thresholds},
                         "band_after": {str(t): band_share(after, test.labels, t) for t in thresholds},
                         "same_rankings": same_rankings(test_logits, after, test.groups)})
            reranker.close()

    def spread(key: str) -> dict:
        out = {}
        for t in thresholds:
            values = [row[key][str(t)]["precision"] for row in rows if row[key][str(t)]["pairs"]]
            out[str(t)] = max(values) - min(values) if values else float("nan")
        return out

    command = "python benchmarks/calibration_report.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    report = {"k": args.k, "thresholds": thresholds, "dev": dev.describe(), "test": test.describe(), "rows": rows,
              "spread": {"before": spread("precision_before"), "after": spread("precision_after")},
              "machine": machine(), "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
              "seconds": time.perf_counter() - started, "command": command}
    text = markdown(report)
    write_report(Path(args.out), "calibration", "Calibrated scores across the reranker ladder", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
