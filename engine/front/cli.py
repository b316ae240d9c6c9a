"""The ``crossrank`` command line. Each subcommand has its own ``--help``.

A failure is one line on stderr naming the problem, exit status 2; ``--debug`` (or the
environment variable ``CROSSRANK_DEBUG=1``) prints the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from crossrank.artifact import load_artifact
from crossrank.errors import CrossrankError, InvalidArgumentError, MissingFileError
from crossrank.evaluation.datasets import read_jsonl
from crossrank.front.args import add_device_argument, needs_extra
from crossrank.front.bench import add_bench
from crossrank.front.calibrate import add_calibrate
from crossrank.front.ray import add_score_dataset
from crossrank.front.search import add_search_commands
from crossrank.front.select import add_select
from crossrank.front.serve import add_serve
from crossrank.front.tune import add_tune
from crossrank.reranker import Reranker
from crossrank.settings import BACKENDS


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="convert a Hugging Face model folder to an optimized ONNX artifact",
        description="Export a Hugging Face checkpoint (local folder, or a model id when a hub is "
                    "reachable) to an artifact folder: fused ONNX graph with its head, tokenizer.json "
                    "and manifest.json with fidelity figures measured against PyTorch. Needs the "
                    "'export' extra: pip install 'crossrank[export]'.",
    )
    p.add_argument("src", help="Hugging Face model folder or model id")
    p.add_argument("out", help="artifact folder to create")
    p.add_argument("--kind", required=True, choices=["cross", "bi"],
                   help="cross: reranker (BERT/XLM-R/ModernBERT/DeBERTa-v2 sequence classification with 1 or "
                        "2 labels, or a Qwen3 yes/no decoder reranker); bi: embedder (BERT/XLM-R/ModernBERT/"
                        "DeBERTa-v2 encoder)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"],
                   help="fp32 (reference), int8 (CPU), fp16 (CUDA). Default: fp32")
    p.add_argument("--int8-recipe", default=None,
                   help="int8 quantization recipe (default: the batch-invariant per-row recipe; all: "
                        "crossrank.kernels.quantize.RECIPES, compared by `make bench-int8`)")
    p.add_argument("--max-length", type=int, default=None,
                   help="token window (default: the model's own: 512 for BERT cross-encoders, 8192 for "
                        "ModernBERT and the qwen3-reranker template, sentence-transformers' max_seq_length "
                        "for bi-encoders)")
    p.add_argument("--template", default=None,
                   help="decoder rerankers (Qwen3ForCausalLM): the prompt template, a bundled name "
                        "(qwen3-reranker, the default) or a JSON file; see docs/export.md")
    p.add_argument("--fidelity-data", default=None,
                   help="JSONL of {\"query\": ..., \"documents\": [...]} for the fidelity check "
                        "(default: the Semanlink sample from cherche==2.2.1)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-low-fidelity", action="store_true",
                   help="keep the artifact even when fidelity is below the bar (figures are recorded)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    with needs_extra("export"):
        from crossrank.export import export_model
    manifest = export_model(
        args.src, args.out, kind=args.kind, precision=args.precision, force=args.force,
        allow_low_fidelity=args.allow_low_fidelity, max_length=args.max_length,
        int8_recipe=args.int8_recipe, fidelity_data=args.fidelity_data, template=args.template,
    )
    print(describe_artifact(Path(args.out), manifest))
    return 0


def describe_artifact(path: Path, manifest: dict) -> str:
    size_mb = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
    fid = manifest["fidelity"]
    keys = ("max_abs_diff", "spearman", "mean_cosine", "top10_agreement")
    figures = ", ".join(f"{k} {fid[k]:.6g}" for k in keys if k in fid)
    recipe = manifest["quantization"]["name"] if manifest.get("quantization") else "-"
    family = manifest.get("family", "bert")
    template = f", template {manifest['prompt'].get('name')}" if manifest.get("prompt") else ""
    return (f"{path}: {manifest['kind']} {manifest['precision']} ({family} family{template}, recipe {recipe}), "
            f"max_length {manifest['max_length']}, {size_mb:.1f} MB, exported in {manifest['export_seconds']} s\n"
            f"  fidelity vs PyTorch on {fid.get('pairs') or fid.get('texts')} real "
            f"{'pairs' if 'pairs' in fid else 'texts'}: {figures} [{'pass' if fid['passed'] else 'BELOW BAR'}: {fid['bar']}]")


def _add_certify(sub) -> None:
    p = sub.add_parser(
        "certify", help="measure a backend/precision of an artifact against PyTorch and record a certificate",
        description="Run the artifact on another backend or precision (e.g. OpenVINO bf16 on a CPU with "
                    "AVX-512 BF16 or AMX) over the export's fidelity set, compare with the PyTorch model it "
                    "was exported from (SRC), and write the figures, the bar and this CPU's ISA to "
                    "ART/certificates.json. Reranker/Embedder(ART, precision='bf16') runs only with a passing "
                    "certificate for this graph and this CPU's bf16 path. Bars: Spearman >= 0.999 (cross), "
                    "mean cosine >= 0.999 (bi) for bf16; the export's for the artifact's own precision. "
                    "Needs the 'export' extra (PyTorch) and, for OpenVINO, the 'openvino' extra.")
    p.add_argument("artifact", metavar="ART", help="artifact folder (fp32 for bf16)")
    p.add_argument("src", metavar="SRC", help="the Hugging Face model folder ART was exported from")
    p.add_argument("--backend", default="openvino", choices=list(BACKENDS), help="default: openvino")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "int8", "fp16"],
                   help="bf16 (of an fp32 artifact) or the artifact's own precision; default: bf16")
    p.add_argument("--fidelity-data", default=None,
                   help="JSONL of {\"query\": ..., \"documents\": [...]} (default: the sample the export measured)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: physical cores)")
    p.set_defaults(func=_run_certify)


def _run_certify(args) -> int:
    with needs_extra("export"):
        from crossrank.export.certify import certify
    record, path = certify(args.artifact, args.src, args.backend, args.precision, args.fidelity_data,
                           threads=args.threads)
    figures = record["figures"]
    print(f"{path}: {record['backend']}-{record['precision']} on {record['cpu']['model']} "
          f"({' '.join(record['cpu']['isa'])}): {record['verdict']} -> {'PASS' if record['passed'] else 'FAIL'}; "
          f"batch invariance max abs diff {figures.get('batch_invariance_max_abs_diff', float('nan')):.3g}")
    return 0 if record["passed"] else 1


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="verify an artifact folder and print its manifest",
                       description="Check every file's sha256 against manifest.json and print a summary "
                                   "(or the whole manifest with --json).")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    artifact = load_artifact(args.artifact)
    print(json.dumps(artifact.manifest, indent=2) if args.json else describe_artifact(artifact.path, artifact.manifest))
    return 0


def _add_rerank(sub) -> None:
    p = sub.add_parser("rerank", help="rerank documents from a file for one query",
                       description="Score every document in --docs against --query with a cross-encoder "
                                   "artifact and print them best first.")
    p.add_argument("--reranker", required=True, help="cross-encoder artifact folder")
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument("--docs", required=True,
                   help="documents: JSONL with {\"id\": ..., \"text\": ...} per line (.jsonl), else one per line")
    p.add_argument("--top-n", type=int, default=10, help="how many to print (default 10; 0 = all)")
    add_device_argument(p)
    p.add_argument("--long-documents", default="truncate", choices=["truncate", "chunk"],
                   help="truncate long documents to the window, or score overlapping windows (default truncate)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=_run_rerank)


def read_documents(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, texts) from a JSONL corpus ({"id", "text"} per line) or a plain file (one per line)."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        ids, texts = [], []
        for where, number, row in read_jsonl(path, "documents file", ("text",)):
            if not isinstance(row["text"], str):
                raise InvalidArgumentError(f"{where}: \"text\" must be a string, got {type(row['text']).__name__}")
            ids.append(str(row.get("id", number)))
            texts.append(row["text"])
        return ids, texts
    if not path.is_file():
        raise MissingFileError(f"documents file {str(path)!r} does not exist")
    kept = [(str(number), line) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if line.strip()]
    return [number for number, _ in kept], [line for _, line in kept]


def _run_rerank(args) -> int:
    ids, texts = read_documents(args.docs)
    reranker = Reranker(args.reranker, device=args.device, long_documents=args.long_documents)
    ranked = reranker.rerank(args.query, texts, top_n=args.top_n or None)
    for rank, hit in enumerate(ranked, start=1):
        if args.json:
            print(json.dumps({"rank": rank, "id": ids[hit.index], "score": hit.score, "text": hit.document}))
        else:
            print(f"{rank:>3}  {hit.score:.4f}  {ids[hit.index]}  {hit.document[:100]!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossrank",
        description="Fast, faithful two-stage retrieval: export models to optimized ONNX, embed and "
                    "index with usearch, rerank with cross-encoders on ONNX Runtime.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failure (also: environment variable CROSSRANK_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_export(sub)
    _add_certify(sub)
    _add_info(sub)
    _add_rerank(sub)
    add_search_commands(sub)
    add_bench(sub)
    add_tune(sub)
    add_select(sub)
    add_calibrate(sub)
    add_serve(sub)
    add_score_dataset(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CROSSRANK_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"crossrank {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        if isinstance(err, (CrossrankError, OSError)):
            message = str(err)
        else:  # a bug or an unforeseen failure: still one line, with the way to see more
            message = (f"unexpected {type(err).__name__}: {err} (run with --debug or CROSSRANK_DEBUG=1 "
                       f"for the traceback)")
        print(f"crossrank {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
