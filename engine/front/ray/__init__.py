"""crossrank beyond one machine, on Ray (extra ``ray``: ``pip install 'crossrank[ray]'``).

- ``crossrank.front.ray.serve``: the ``crossrank serve`` app as a Ray Serve deployment, one copy
  of the models and one scheduler per replica (``crossrank serve --ray``, or a Serve config file
  naming ``crossrank.front.ray.serve:app_builder``; ``deploy/ray-serve.yaml``).
- ``crossrank.front.ray.data``: ``score_dataset``, offline scoring of large pair sets with Ray
  Data, Parquet out, resumable (``crossrank score-dataset``).
- ``crossrank.front.ray.config``: ``RayConfig``, the deployment options and the ``--ray*`` flags
  of ``crossrank serve`` (no Ray imported).

This module only registers the ``score-dataset`` subcommand: Ray and pyarrow are imported when a
command runs, so the rest of the CLI works without the extra. ``import crossrank`` never loads it.
"""

from __future__ import annotations

from pathlib import Path

from crossrank.errors import MissingFileError
from crossrank.front.args import add_device_argument, needs_extra, positive_int_arg, threads_arg
from crossrank.front.ray.config import add_ray_address


def add_score_dataset(sub) -> None:
    p = sub.add_parser(
        "score-dataset", help="score a large file of (query, document) pairs on a Ray cluster (Parquet out)",
        description="Score every (query, document) pair of --input with a cross-encoder artifact on a Ray cluster "
                    "(Ray Data: a pool of actors, one Reranker each, pairs sorted by length inside each block) and "
                    "write the scores as Parquet parts under --output: columns row, id (the input's, else the row "
                    "number) and score; read them back with pyarrow.parquet.read_table(OUTPUT). Each block of "
                    "--block-rows rows is written atomically, so running the same command again skips the blocks "
                    "already written (a stopped job resumes). The input and the artifact must be at a path every "
                    "node sees. Needs the 'ray' extra: pip install 'crossrank[ray]'.",
    )
    p.add_argument("--reranker", required=True, metavar="ART", help="cross-encoder artifact folder")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="pairs: .jsonl ({\"id\"?, \"query\", \"document\"} per line) or .parquet (those columns)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for the Parquet parts (created; a folder of an earlier run of this same job resumes)")
    add_ray_address(p)
    p.add_argument("--concurrency", type=positive_int_arg, default=None, metavar="N",
                   help="actors, each with its own Reranker (default: the cluster's CPUs // --threads; GPUs on cuda)")
    p.add_argument("--threads", type=threads_arg, default=1, metavar="N",
                   help="intra-op threads per actor, = CPUs each reserves (default 1)")
    p.add_argument("--block-rows", type=positive_int_arg, default=None, metavar="N",
                   help="rows per block: the unit of progress, writing and resuming (default 10000)")
    p.add_argument("--max-length", type=positive_int_arg, default=None, metavar="N",
                   help="token window (default: the artifact's)")
    p.add_argument("--raw-scores", action="store_true", help="logits instead of the artifact's activation")
    p.add_argument("--id-field", default="id", help="id field or column (default id; absent: the row number)")
    p.add_argument("--query-field", default="query", help="query field or column (default query)")
    p.add_argument("--document-field", default="document", help="document field or column (default document)")
    add_device_argument(p)
    p.set_defaults(func=run_score_dataset)


def run_score_dataset(args) -> int:
    with needs_extra("ray"):
        from crossrank.front.ray.data import DEFAULT_BLOCK_ROWS, score_dataset
    if not Path(args.reranker).is_dir():
        raise MissingFileError(f"--reranker {args.reranker!r} is not a folder")
    report = score_dataset(args.reranker, args.input, args.output, address=args.ray_address,
                           concurrency=args.concurrency, threads=args.threads, device=args.device,
                           block_rows=args.block_rows or DEFAULT_BLOCK_ROWS, max_length=args.max_length,
                           raw_scores=args.raw_scores, id_field=args.id_field, query_field=args.query_field,
                           document_field=args.document_field)
    print(f"{report.output}: {report.rows} pairs in {report.blocks} blocks; {report.skipped_blocks} already written, "
          f"{report.written_blocks} written now ({report.scored_rows} pairs in {report.seconds:.1f} s, "
          f"{report.pairs_per_second:.1f} pairs/s)")
    return 0
