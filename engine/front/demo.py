"""``make demo`` (``python -m crossrank.front.demo``): the seed's story in one command.

1. Export the bundled models once (cached under artifacts/): the MiniLM bi-encoder (fp32, int8)
   and the reranker ladder shipped in models/ (2-, 4- and 6-layer starter rerankers, int8).
2. Index Semanlink and run two-stage example queries (bi-encoder + usearch, then the 6-layer starter).
3. Choose a reranker by quality against latency: a short ``crossrank select`` on Semanlink dev tags,
   printing the table with the Pareto front and where the plot went. Its result is cached with its
   inputs, so a second ``make demo`` takes seconds (``--fresh-select`` measures again).

A command-line front: it may import ``crossrank.export`` (lazily), the runtime never does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from crossrank.embedder import Embedder
from crossrank.errors import CrossrankError, MissingFileError
from crossrank.evaluation.retrieval import ensure_semanlink_index
from crossrank.front.cli import describe_artifact
from crossrank.front.search import format_result
from crossrank.index import Index
from crossrank.index_files import index_info
from crossrank.pipeline import Pipeline
from crossrank.reranker import Reranker

EXAMPLE_QUERIES = ("knowledge graph embeddings", "transformers for NLP", "semantic web ontologies")
MODELS_ENV = "CROSSRANK_MODELS"
MODELS_IN_CHECKOUT = Path("models")
# The reranker ladder, fastest first: the starter cut to 2 and 4 layers (distilled), and the starter (6).
LADDER = ("starter-reranker-L2", "starter-reranker-L4", "starter-reranker")
SELECT_FOLDER = "select-demo"
# A short select (about 35 s on 2 loaded cores): 32 dev tags, each rung reranking the top 10 and 20 of
# 20 candidates, each rung into every slower one; latency over 5 requests per configuration. The full
# dev split (149 tags, depths up to 100: 4 to 5 minutes) is in docs/models.md.
SELECT_OPTIONS = ("--dataset", "semanlink", "--split", "dev", "--limit", "32", "--k", "20", "--depths", "10,20",
                  "--latency-queries", "5", "--latency-budget-ms", "200")


@dataclass(frozen=True)
class DemoArtifacts:
    embedder: Path          # int8
    index: Path
    rerankers: tuple        # the ladder's int8 artifacts, fastest first


def models_folder() -> Path:
    """Where the ladder's model folders are: $CROSSRANK_MODELS, else ``models/`` under the current
    folder (a crossrank checkout, where ``make demo`` runs). They ship with the repository, not
    with the Python package (45 MB of weights for the starter)."""
    folder = Path(os.environ.get(MODELS_ENV) or MODELS_IN_CHECKOUT)
    missing = [name for name in LADDER if not (folder / name / "config.json").is_file()]
    if missing:
        raise MissingFileError(
            f"the reranker ladder is not complete in {str(folder.resolve())!r} (missing {', '.join(missing)}): "
            f"it ships with the crossrank repository under models/; run the demo from a checkout or set "
            f"{MODELS_ENV} to a folder holding {', '.join(LADDER)}")
    return folder


def _report(artifact, cached: bool) -> None:
    print(("[cached] " if cached else "[new]    ") + describe_artifact(artifact.path, artifact.manifest), flush=True)


def prepare(artifacts: Path, models: Path | None = None, fp32_embedder: bool = True) -> DemoArtifacts:
    """Export (or reuse) the bi-encoder, the Semanlink index and the reranker ladder under
    ``artifacts``; every export is checked against its source and recipe and redone when stale.
    ``fp32_embedder``: also the fp32 bi-encoder (the benchmarks' reference; nothing below uses it)."""
    from crossrank.export import bundled_bi_encoder, ensure_artifact

    models = models_folder() if models is None else models
    source = bundled_bi_encoder()
    for precision in ("fp32", "int8") if fp32_embedder else ("int8",):
        _report(*ensure_artifact(source, artifacts / f"embedder-{precision}", "bi", precision))
    embedder = Embedder(artifacts / "embedder-int8")
    index, reused = ensure_semanlink_index(embedder, artifacts / "semanlink-index")
    print(f"{'[cached]' if reused else '[new]   '} Semanlink index: {len(index)} documents, "
          f"{artifacts / 'semanlink-index'}", flush=True)
    rerankers = []
    for name in LADDER:
        artifact, cached = ensure_artifact(models / name, artifacts / f"{name}-int8", "cross", "int8")
        _report(artifact, cached)
        rerankers.append(artifact.path)
    return DemoArtifacts(artifacts / "embedder-int8", artifacts / "semanlink-index", tuple(rerankers))


def run_queries(made: DemoArtifacts) -> None:
    embedder = Embedder(made.embedder)
    pipeline = Pipeline(embedder, Index.load(made.index, view=True, embedder=embedder), Reranker(made.rerankers[-1]))
    print(f"\nRunning {len(EXAMPLE_QUERIES)} example queries, two stages: bi-encoder + usearch top 100, "
          f"then {made.rerankers[-1].name}.\n")
    for query in EXAMPLE_QUERIES:
        print(format_result(pipeline.search(query, k=100, top_n=3)))
        print()


def select_argv(made: DemoArtifacts, out: Path) -> list[str]:
    return ["select", "--index", str(made.index), "--rerankers", ",".join(str(p) for p in made.rerankers),
            *SELECT_OPTIONS, "--out", str(out)]


def _inputs_key(made: DemoArtifacts, argv: list[str]) -> str:
    """What the select result depends on: its command, the artifacts' manifests (sha256 of every
    file) and the index generation."""
    digest = hashlib.sha256(json.dumps(argv).encode())
    for folder in (made.embedder, *made.rerankers):
        digest.update((folder / "manifest.json").read_bytes())
    digest.update(index_info(made.index)["generation"].encode())
    return digest.hexdigest()


def run_select(made: DemoArtifacts, out: Path, fresh: bool = False) -> None:
    """The short ``crossrank select``: measured, or its cached table when its inputs are unchanged."""
    from crossrank.front.select import format_select

    argv = select_argv(made, out)
    command = "crossrank " + shlex.join(argv)
    key_file = out / "demo-inputs.json"
    key = _inputs_key(made, argv)
    print(f"Which reranker? Quality against latency of the ladder, at two depths and in cascades, on "
          f"Semanlink dev tags:\n  {command}\n", flush=True)
    cached = not fresh and key_file.is_file() and (out / "select.json").is_file() \
        and json.loads(key_file.read_text()).get("key") == key
    if cached:
        report = json.loads((out / "select.json").read_text())
        print(format_select(report))
        print(f"\n[cached] measured at {report.get('measured_at', 'an earlier run')}; "
              f"`make demo DEMO_ARGS=--fresh-select` measures again")
    else:
        key_file.unlink(missing_ok=True)
        status = subprocess.run([sys.executable, "-m", "crossrank", *argv]).returncode
        if status != 0:
            raise CrossrankError(f"`{command}` failed (exit status {status})")
        report = json.loads((out / "select.json").read_text())
        report["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
        (out / "select.json").write_text(json.dumps(report, indent=2) + "\n")
        key_file.write_text(json.dumps({"key": key}) + "\n")
    print(f"plot: {out / 'select.png'}   table: {out / 'select.md'}")


def run(artifacts: Path, fresh_select: bool = False) -> None:
    start = time.perf_counter()
    made = prepare(artifacts)
    run_queries(made)
    run_select(made, artifacts / SELECT_FOLDER, fresh=fresh_select)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossrank.front.demo",
                                     description="Export the bundled models (the bi-encoder and the 2-, 4- and "
                                                 "6-layer starter rerankers), index Semanlink, run two-stage "
                                                 "example queries, and choose a reranker with a short "
                                                 "`crossrank select`.")
    parser.add_argument("--artifacts", default="artifacts", help="cache folder (default: artifacts/)")
    parser.add_argument("--fresh-select", action="store_true",
                        help="measure the select table again even when its inputs are unchanged")
    args = parser.parse_args(argv)
    try:
        run(Path(args.artifacts), fresh_select=args.fresh_select)
    except (CrossrankError, OSError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
