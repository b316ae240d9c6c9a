"""``make demo`` (``python -m crossrank.front.demo``): export the bundled models (cached under
artifacts/), index Semanlink, and run two-stage example queries.

A command-line front: it may import ``crossrank.export`` (lazily), the runtime never does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from crossrank.embedder import Embedder
from crossrank.errors import CrossrankError, MissingFileError
from crossrank.evaluation.retrieval import ensure_semanlink_index
from crossrank.front.cli import describe_artifact
from crossrank.front.search import format_result
from crossrank.pipeline import Pipeline
from crossrank.reranker import Reranker

EXAMPLE_QUERIES = ("knowledge graph embeddings", "transformers for NLP", "semantic web ontologies")
STARTER_ENV = "CROSSRANK_STARTER_RERANKER"
STARTER_IN_CHECKOUT = Path("models") / "starter-reranker"


def starter_reranker() -> Path:
    """The starter reranker's folder: $CROSSRANK_STARTER_RERANKER, else ``models/starter-reranker``
    under the current folder (a crossrank checkout, where ``make demo`` runs). It ships with the
    repository, not with the Python package (45 MB of weights)."""
    folder = Path(os.environ.get(STARTER_ENV) or STARTER_IN_CHECKOUT)
    if not (folder / "config.json").is_file():
        raise MissingFileError(
            f"the starter reranker is not at {str(folder.resolve())!r}: it ships with the crossrank "
            f"repository under models/starter-reranker; run the demo from a checkout, set {STARTER_ENV}, "
            f"or pass --reranker-source DIR (any Hugging Face cross-encoder folder) or 'none'")
    return folder


def run(artifacts: Path, reranker_source: str | None) -> None:
    from crossrank.export import bundled_bi_encoder, ensure_artifact

    start = time.perf_counter()
    source = bundled_bi_encoder()
    for precision in ("fp32", "int8"):
        artifact, cached = ensure_artifact(source, artifacts / f"embedder-{precision}", "bi", precision)
        print(("[cached] " if cached else "[new]    ") + describe_artifact(artifact.path, artifact.manifest))
    embedder = Embedder(artifacts / "embedder-int8")
    index, reused = ensure_semanlink_index(embedder, artifacts / "semanlink-index")
    print(f"{'[cached]' if reused else '[new]   '} Semanlink index: {len(index)} documents, "
          f"{artifacts / 'semanlink-index'}")
    reranker = None
    if reranker_source is None or reranker_source.lower() != "none":
        source = Path(reranker_source) if reranker_source else starter_reranker()
        if not (source / "config.json").is_file():
            raise MissingFileError(f"reranker source {str(source)!r} is not a model folder (no config.json); "
                                   f"pass --reranker-source none to run stage one only")
        artifact, cached = ensure_artifact(source, artifacts / f"{source.name}-int8", "cross", "int8")
        print(("[cached] " if cached else "[new]    ") + describe_artifact(artifact.path, artifact.manifest))
        reranker = Reranker(artifact.path)
    stages = "two stages: bi-encoder + usearch top 100, then the cross-encoder" if reranker else "stage one only"
    print(f"\nRunning {len(EXAMPLE_QUERIES)} example queries, {stages}.\n")
    pipeline = Pipeline(embedder, index, reranker)
    for query in EXAMPLE_QUERIES:
        print(format_result(pipeline.search(query, k=100, top_n=3)))
        print()
    print(f"demo finished in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossrank.front.demo",
                                     description="Export the bundled models, index Semanlink and run "
                                                 "two-stage example queries.")
    parser.add_argument("--artifacts", default="artifacts", help="cache folder (default: artifacts/)")
    parser.add_argument("--reranker-source", default=None, metavar="DIR",
                        help="cross-encoder folder exported (int8) as stage two (default: the starter reranker "
                             f"in models/starter-reranker, or ${STARTER_ENV}); 'none' runs stage one only")
    args = parser.parse_args(argv)
    try:
        run(Path(args.artifacts), args.reranker_source)
    except (CrossrankError, OSError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
