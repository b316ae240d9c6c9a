"""``crossrank calibrate``: fit a reranker's map from raw score to P(relevant) and store it beside
the artifact (``ART/calibration.json``; ``crossrank.calibration`` applies it, the fitting is
``crossrank.evaluation.calibration``). The ONNX files and the manifest are never touched.
"""

from __future__ import annotations

from pathlib import Path

from crossrank.calibration import CALIBRATION_FILE, METHODS
from crossrank.errors import MissingFileError, OutputExistsError, UsageError
from crossrank.front.args import add_device_argument, positive_int_arg

DEFAULT_INDEX = Path("artifacts") / "semanlink-index"   # what `make demo` builds
DEFAULT_K = 20


def add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a reranker's calibration: raw score -> P(relevant), stored beside the artifact",
        description="Score labelled (query, document) pairs with the reranker, fit a monotone map from its raw "
                    "score to the probability that a document is relevant (isotonic regression and Platt "
                    "scaling, each scored on held-out queries; the one with the lower held-out Brier score is "
                    "kept) and write it to ART/calibration.json with the hash of the data and the sha256 of the "
                    "artifact's graph. A Reranker on that folder then returns calibrated scores (raw_scores "
                    "still gives the logits); rankings do not change. The pairs: Semanlink tags of --split (their "
                    "labels as queries, each tag's top --k first-stage candidates from --index as documents, "
                    "relevant = carries the tag), or your own --pairs file.",
        epilog="example: crossrank calibrate artifacts/starter-reranker-int8 --dataset semanlink --split dev")
    p.add_argument("artifact", metavar="ART", help="cross-encoder artifact folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=["semanlink"], default=None,
                        help="the bundled Semanlink tags (the default when --pairs is not given)")
    source.add_argument("--pairs", metavar="FILE.jsonl",
                        help='labelled pairs: JSONL of {"query": ..., "document": ..., "label": 0 or 1} per line')
    p.add_argument("--split", default="dev", choices=["dev", "train"],
                   help="Semanlink tags to fit on (default dev; the test tags are kept for reporting)")
    p.add_argument("--index", default=str(DEFAULT_INDEX), metavar="DIR",
                   help=f"Semanlink index for the candidates (default {DEFAULT_INDEX}, built by make demo)")
    p.add_argument("--embedder", default=None, metavar="ART", help="the index's embedder (default: the one it records)")
    p.add_argument("--k", type=positive_int_arg, default=DEFAULT_K,
                   help=f"first-stage candidates per tag (default {DEFAULT_K})")
    p.add_argument("--limit", type=positive_int_arg, default=None, metavar="N", help="the first N tags only")
    p.add_argument("--method", default="auto", choices=("auto",) + METHODS,
                   help="auto (default): the map with the lower held-out Brier score; or force one")
    p.add_argument("--out", default=None, metavar="FILE",
                   help=f"where to write (default ART/{CALIBRATION_FILE}, where a Reranker finds it)")
    p.add_argument("--force", action="store_true", help="replace an existing calibration file")
    add_device_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from crossrank.evaluation.calibration import fit_calibration, raw_scores, read_labelled_pairs, semanlink_pairs
    from crossrank.reranker import Reranker

    out = Path(args.out) if args.out else Path(args.artifact) / CALIBRATION_FILE
    if out.exists() and not args.force:
        raise OutputExistsError(f"{str(out)!r} exists: pass --force to replace it")
    if args.pairs and (args.limit is not None or args.index != str(DEFAULT_INDEX) or args.embedder):
        raise UsageError("--index, --embedder and --limit choose Semanlink candidates: not with --pairs")
    reranker = Reranker(args.artifact, device=args.device, calibration=False)  # its raw scores, whatever is there
    if args.pairs:
        pairs = read_labelled_pairs(args.pairs)
    else:
        pairs = semanlink_pairs(_first_stage(args), args.split, args.k, args.limit)
    logits = raw_scores(reranker, pairs, progress=not args.quiet)
    calibration = fit_calibration(logits, pairs, reranker.artifact.sha256, args.method)
    calibration.save(out)
    print(describe_calibration(calibration, reranker.path, out))
    return 0


def _first_stage(args):
    from crossrank.embedder import Embedder
    from crossrank.index import Index, recorded_embedder_path
    from crossrank.pipeline import Pipeline

    if not Path(args.index).is_dir():
        raise MissingFileError(f"index {args.index!r} is not a folder: `make demo` builds the Semanlink index there, "
                               f"or pass --index DIR (crossrank index build --semanlink), or give --pairs")
    embedder = Embedder(args.embedder or recorded_embedder_path(args.index), device=args.device)
    return Pipeline(embedder, Index.load(args.index, view=True, embedder=embedder))


def describe_calibration(calibration, artifact: Path, out: Path) -> str:
    """What was fitted, on what, each map's held-out figures, and where it went."""
    data, selection = calibration.data, calibration.selection
    rows = [("sigmoid (uncalibrated)", selection["sigmoid"]), *selection["held_out"].items()]
    lines = [f"{artifact}: {data['pairs']} pairs ({data['positives']} relevant, {data['queries']} queries) of "
             f"{data['source']}",
             f"  {'':<24}{'ECE':>8}{'Brier':>8}   (held out: {selection['folds']} folds by query)"]
    lines += [f"  {name:<24}{figures['ece']:>8.4f}{figures['brier']:>8.4f}" for name, figures in rows]
    lines.append(f"kept: {calibration.method} ({selection['rule']}) -> {out}")
    return "\n".join(lines)


__all__ = ["add_calibrate", "describe_calibration", "run_calibrate"]
