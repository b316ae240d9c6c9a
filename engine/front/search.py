"""Command-line front of the first stage and the pipeline: ``index``, ``search`` and ``eval``.

``add_search_commands(subparsers)`` adds them to the ``crossrank`` parser. Also here: reading a
JSONL corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from crossrank.errors import InvalidArgumentError, MissingFileError, OutputExistsError, UsageError
from crossrank.evaluation.datasets import read_jsonl
from crossrank.evaluation.retrieval import build_semanlink_index, evaluate
from crossrank.front.args import add_device_argument, int_list_arg_in_order, milliseconds_arg, positive_int_arg
from crossrank.front.model_folders import add_model_folder_arguments, reranker_artifacts
from crossrank.index import DTYPES, Index, recorded_embedder_path
from crossrank.index_files import index_info

# -- library helpers ------------------------------------------------------------------------

def read_corpus(path: str | Path) -> tuple[list, list[str]]:
    """ids and texts of a JSONL corpus, one ``{"id": str|int, "text": str}`` per line.

    Blank lines are skipped. A bad line raises InvalidArgumentError naming the file and line number.
    """
    ids, texts, line_of = [], [], {}
    for where, number, row in read_jsonl(path, "corpus file", ("id", "text")):
        doc_id, text = row["id"], row["text"]
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise InvalidArgumentError(f'{where}: "id" must be a string or an integer, got {doc_id!r:.60}')
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError(f'{where}: "text" must be a non-empty string, got {text!r:.60}')
        key = (type(doc_id), doc_id)
        if key in line_of:
            raise InvalidArgumentError(f"{where}: id {doc_id!r} already appeared on line {line_of[key]}")
        line_of[key] = number
        ids.append(doc_id)
        texts.append(text)
    if not texts:
        raise InvalidArgumentError(f"corpus file {str(path)!r} holds no documents")
    return ids, texts


STORE_ENV = "CROSSRANK_STORE"


def add_store_arguments(p, what: str = "the first stage") -> None:
    """--index DIR | --store URL|DIR, --table, --hybrid, --ef-search and the read-only column names."""
    p.add_argument("--index", metavar="DIR", help="index folder (crossrank index build); same as --store DIR")
    p.add_argument("--store", metavar="URL|DIR", default=None,
                   help=f"where {what} searches: postgresql://USER@HOST:PORT/DB (pgvector), milvus://HOST:PORT, or "
                        f"an index folder (default: ${STORE_ENV}). Passwords: PGPASSWORD / MILVUS_TOKEN, or in the URL "
                        "(never printed)")
    p.add_argument("--table", default=None, metavar="NAME",
                   help="table (PostgreSQL) or collection (Milvus) of the store (default crossrank_documents)")
    p.add_argument("--hybrid", action="store_true",
                   help="fuse dense and lexical candidates (reciprocal rank fusion, k=60): PostgreSQL full-text "
                        "search, or BM25 beside an index folder (built with `index build --hybrid`)")
    p.add_argument("--ef-search", type=positive_int_arg, default=None, metavar="N",
                   help="HNSW candidates explored per search (default: the store's; at least --k)")
    own = p.add_argument_group("a PostgreSQL table of your own, searched read-only (all three columns)")
    own.add_argument("--id-column", metavar="COL", help="its id column")
    own.add_argument("--text-column", metavar="COL", help="its document text column")
    own.add_argument("--vector-column", metavar="COL", help="its pgvector vector(n) column")
    own.add_argument("--metadata-columns", metavar="COL,COL", help="columns returned as each hit's metadata")


def store_of(args, folder_flag: str = "index") -> str:
    """The first stage's location from --store, --index (index build: --out) or $CROSSRANK_STORE."""
    folder = getattr(args, folder_flag)
    if args.store and folder:
        raise UsageError(f"give --store or --{folder_flag}, not both")
    where = args.store or folder or os.environ.get(STORE_ENV)
    if not where:
        raise UsageError(f"name the first stage: --{folder_flag} DIR or --store URL|DIR (or ${STORE_ENV})")
    return where


def _read_only_columns(args) -> dict | None:
    names = {"id_column": args.id_column, "text_column": args.text_column, "vector_column": args.vector_column}
    if not any(names.values()) and not args.metadata_columns:
        return None
    if not all(names.values()):
        raise UsageError("a table of your own needs --id-column, --text-column and --vector-column")
    return {**names, "metadata_columns": [c for c in (args.metadata_columns or "").split(",") if c]}


def locate_first_stage(args) -> str:
    """The embedder artifact for --store/--index (--embedder, else the one the index or store
    recorded), after checking the index or reaching the store: before any model loads or exports."""
    from crossrank.stores import DEFAULT_TABLE, open_retriever, store_kind

    where = store_of(args)
    path = args.embedder
    if store_kind(where) == "index":
        index_info(where)
        return path or str(recorded_embedder_path(where))
    columns = _read_only_columns(args)
    probe = open_retriever(where, table=args.table or DEFAULT_TABLE, read_only_columns=columns)
    recorded = probe.embedder_info
    probe.close()
    if path is None and columns:
        raise UsageError("a table of your own records no embedder: pass --embedder ART (the one that made its vectors)")
    if path is None:
        path = recorded.get("path")
        if not path or not Path(path).is_dir():
            raise MissingFileError(f"the store was built by the embedder at {path!r} (model.onnx sha256 "
                                   f"{str(recorded.get('sha256'))[:16]}...), which is not here: pass it with "
                                   f"--embedder ART")
    return path


def open_first_stage(args, device: str, embedder_path: str | None = None):
    """(embedder, retriever) of --store/--index (``embedder_path``: locate_first_stage's answer)."""
    from crossrank.embedder import Embedder
    from crossrank.stores import DEFAULT_TABLE, open_retriever

    path = embedder_path or locate_first_stage(args)
    where, table, columns = store_of(args), args.table or DEFAULT_TABLE, _read_only_columns(args)
    embedder = Embedder(path, device=device)
    return embedder, open_retriever(where, table=table, embedder=embedder, hybrid=args.hybrid,
                                    read_only_columns=columns, ef_search=args.ef_search)


def add_reranking_arguments(p) -> None:
    """--reranker (repeatable: a cascade), --depths, and how a model folder given as one is exported."""
    p.add_argument("--reranker", metavar="DIR", action="append", default=None,
                   help="cross-encoder: an artifact folder, or a Hugging Face model folder (exported once into "
                        "--artifacts) (default: first stage only); repeat it for a cascade, each reranking the "
                        "previous one's top candidates (then give --depths)")
    p.add_argument("--depths", type=int_list_arg_in_order, default=None, metavar="N,N,...",
                   help="candidates each --reranker reranks, in order, e.g. 100,20 (default: all k for one "
                        "reranker; required for a cascade)")
    add_model_folder_arguments(p)


def check_reranking_args(args) -> None:
    """--reranker/--depths agree (checked before any model loads); then model folders among the
    --reranker values are replaced by their (cached) exports."""
    from crossrank.pipeline import check_cascade

    if args.reranker:
        check_cascade(args.reranker, args.depths)
        args.reranker = reranker_artifacts(args.reranker, args)
    elif args.depths is not None:
        raise InvalidArgumentError("--depths needs --reranker: nothing would rerank the candidates")


def build_pipeline(embedder, index, args):
    """The Pipeline of --reranker/--depths (first stage only without --reranker)."""
    from crossrank.pipeline import Pipeline
    from crossrank.reranker import Reranker

    if not args.reranker:
        return Pipeline(embedder, index, depths=args.depths)
    rerankers = [Reranker(path, device=args.device) for path in args.reranker]
    return Pipeline(embedder, index, rerankers=rerankers, depths=args.depths)


# -- crossrank index build | info -------------------------------------------------------------

def _add_index(sub) -> None:
    p = sub.add_parser("index", help="build a first-stage vector index, or describe one",
                       description="Build a usearch HNSW index over a corpus with a bi-encoder "
                                   "artifact, or print what a saved index holds.")
    actions = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="embed a corpus and save its index",
        description="Embed every document with the embedder artifact and save an index folder "
                    "(HNSW vectors + SQLite documents + manifest). The save is atomic: an existing "
                    "index at --out stays whole until the new one is complete.",
        epilog='corpus format: one JSON object per line, {"id": "doc-1", "text": "..."}; ids are '
               "strings or integers and must be unique.\nexample: crossrank index build --embedder "
               "artifacts/embedder-int8 --corpus docs.jsonl --out indexes/docs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--embedder", required=True, metavar="ART", help="bi-encoder artifact folder")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", metavar="FILE.jsonl", help='JSONL file of {"id": ..., "text": ...}')
    source.add_argument("--semanlink", action="store_true",
                        help="index the 7,300 Semanlink documents (ids = URLs; needs cherche==2.2.1)")
    build.add_argument("--out", metavar="DIR", help="index folder to write (same as --store DIR)")
    build.add_argument("--store", metavar="URL|DIR", default=None,
                       help=f"where to build: an index folder, postgresql://USER@HOST:PORT/DB (a pgvector table "
                            f"crossrank owns) or milvus://HOST:PORT (a collection crossrank owns) (default: ${STORE_ENV})")
    build.add_argument("--table", default=None, metavar="NAME",
                       help="table (PostgreSQL) or collection (Milvus) to create (default crossrank_documents)")
    build.add_argument("--hybrid", action="store_true",
                       help="an index folder: also build the BM25 index beside it, for `search --hybrid` "
                            "(PostgreSQL tables always carry their full-text column)")
    build.add_argument("--dtype", default="f16", choices=DTYPES,
                       help="stored vector type: f16 (default; same recall as f32 at half the size), "
                            "f32, or i8 (a quarter of f32; loses recall on MiniLM vectors)")
    build.add_argument("--connectivity", type=positive_int_arg, default=None, help="HNSW edges per node (default 32)")
    build.add_argument("--expansion-add", type=positive_int_arg, default=None,
                       help="HNSW candidates explored per insertion (default 256)")
    build.add_argument("--expansion-search", type=positive_int_arg, default=None,
                       help="HNSW candidates explored per search (default 256)")
    build.add_argument("--batch-size", type=positive_int_arg, default=512, help="documents per embedding call (default 512)")
    add_device_argument(build, "where to embed")
    build.add_argument("--force", action="store_true",
                       help="replace an existing index at --out, or crossrank's own table or collection of that name "
                            "(never one crossrank did not create)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_run_index_build)
    info = actions.add_parser("info", help="print a saved index's manifest",
                              description="Print what a saved index holds (no vectors are loaded).")
    info.add_argument("index", metavar="DIR", help="index folder")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=_run_index_info)


def _run_index_build(args) -> int:
    from crossrank.embedder import Embedder
    from crossrank.stores import store_kind

    where = store_of(args, "out")
    if store_kind(where) != "index":
        return _build_store(args, where)
    if args.table:
        raise UsageError("--table names a PostgreSQL table or a Milvus collection; an index folder has none")
    out = Path(where)
    if out.exists() and not args.force:
        raise OutputExistsError(f"{str(out)!r} exists: pass --force to replace it")
    Index.check_save_path(out)  # before the slow part
    ids, texts = read_corpus(args.corpus) if args.corpus else (None, None)  # read before the slow part
    embedder = Embedder(args.embedder, device=args.device)
    options = {"dtype": args.dtype, "connectivity": args.connectivity, "expansion_add": args.expansion_add,
               "expansion_search": args.expansion_search, "batch_size": args.batch_size,
               "progress": not args.no_progress}
    start = time.perf_counter()
    if args.semanlink:
        index = build_semanlink_index(embedder, out, **options)
    else:
        index = Index.build(embedder, texts, ids, **options)
        index.metadata["corpus"] = str(Path(args.corpus).resolve())
        index.save(out)
    if args.hybrid:
        from crossrank.stores.bm25 import BM25Retriever

        BM25Retriever.build(index).save(out)
    seconds = time.perf_counter() - start
    info = index_info(out)
    print(f"indexed {len(index)} documents in {seconds:.1f} s ({len(index) / seconds:.1f} docs/s): "
          f"{index.dtype}, {index.dim} dims, {info['bytes_on_disk'] / 1e6:.1f} MB on disk"
          f"{' + BM25' if args.hybrid else ''} -> {out}")
    return 0


def _build_store(args, where: str) -> int:
    """index build --store postgresql://... | milvus://...: a table or collection crossrank owns."""
    from crossrank.embedder import Embedder
    from crossrank.evaluation.datasets import load_semanlink
    from crossrank.stores import DEFAULT_TABLE, store_kind
    from crossrank.stores.common import mask_url

    kind = store_kind(where)
    if args.hybrid and kind == "milvus":
        raise UsageError("--hybrid is not supported on Milvus stores here (PostgreSQL tables carry full-text search)")
    if args.dtype != "f16" or args.connectivity or args.expansion_add or args.expansion_search:
        raise UsageError("--dtype, --connectivity and --expansion-add/--expansion-search are usearch settings; a store "
                         "keeps float32 vectors in an HNSW index of its own (search breadth: `search --ef-search`)")
    if args.semanlink:
        documents, _ = load_semanlink()
        ids, texts = [d.id for d in documents], [d.text for d in documents]
    else:
        ids, texts = read_corpus(args.corpus)
    if kind == "pgvector":
        from crossrank.stores.pgvector import PgvectorStore as Store
    else:
        from crossrank.stores.milvus import MilvusStore as Store
    table = args.table or DEFAULT_TABLE
    embedder = Embedder(args.embedder, device=args.device)
    start = time.perf_counter()
    store = Store.build(where, table, embedder, texts, ids, force=args.force, batch_size=args.batch_size,
                        progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"indexed {len(texts)} documents in {seconds:.1f} s ({len(texts) / seconds:.1f} docs/s) -> "
          f"{mask_url(where)} {'table' if kind == 'pgvector' else 'collection'} {table!r} ({len(store)} rows)")
    return 0


def _run_index_info(args) -> int:
    info = index_info(args.index)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    emb = info["embedder"]
    print(f"{args.index}: {info['count']} documents, {info['dim']} dims, {info['dtype']}, metric "
          f"{info['metric']}, HNSW connectivity {info.get('connectivity')}, expansion add/search "
          f"{info.get('expansion_add')}/{info.get('expansion_search')}, {info['bytes_on_disk'] / 1e6:.1f} MB "
          f"({info['generation']}, saved {info.get('saved_at')})\n"
          f"  embedder: {emb.get('path')} ({emb.get('precision')}, model.onnx sha256 {str(emb.get('sha256'))[:16]}...)"
          + (f"\n  corpus: {info['metadata']['corpus']}" if info.get("metadata", {}).get("corpus") else ""))
    return 0


# -- crossrank search -------------------------------------------------------------------------

def _add_search(sub) -> None:
    p = sub.add_parser(
        "search", help="two-stage search: index candidates, then (optionally) rerank",
        description="Embed the query, take --k candidates from the index, rerank them with the "
                    "cross-encoder (when --reranker is given) and print the best --top-n with both "
                    "stage scores and per-stage timings (ms).",
        epilog='example: crossrank search --index artifacts/semanlink-index '
               '--reranker artifacts/starter-reranker-int8 "knowledge graph embeddings"')
    p.add_argument("query", help="the query text")
    add_store_arguments(p)
    p.add_argument("--embedder", metavar="ART",
                   help="bi-encoder artifact (default: the one recorded in the index or store; it must match)")
    add_reranking_arguments(p)
    p.add_argument("--k", type=positive_int_arg, default=100, help="first-stage candidates (default 100)")
    p.add_argument("--top-n", type=positive_int_arg, default=10, help="results to print (default 10)")
    p.add_argument("--deadline-ms", type=milliseconds_arg, default=None, metavar="MS",
                   help="time allowed for the search: the reranker scores candidates in first-stage order "
                        "until the next batch would overrun (default: no deadline)")
    add_device_argument(p, "where models run")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run_search)


def _run_search(args) -> int:
    if not args.query.strip():
        raise InvalidArgumentError("the query is empty")
    embedder_path = locate_first_stage(args)  # a missing index or an unreachable store: before any model loads
    check_reranking_args(args)
    embedder, retriever = open_first_stage(args, args.device, embedder_path)
    pipeline = build_pipeline(embedder, retriever, args)
    result = pipeline.search(args.query, k=args.k, top_n=args.top_n, deadline_ms=args.deadline_ms)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    print(format_result(result))
    return 0


def format_result(result, width: int = 100) -> str:
    """A plain-text table of a SearchResult: rank, scores, first-stage rank, id, text."""
    lines = [f"query: {result.query}"]
    for hit in result.hits:
        score = f"score {hit.score:7.4f}  " if hit.score is not None else ""
        text = " ".join(hit.document.split())
        lines.append(f"{hit.rank:3d}. {score}sim {hit.similarity:.4f}  (stage-1 #{hit.first_stage_rank})  {hit.id}")
        lines.append(f"     {text[:width]}{'...' if len(text) > width else ''}")
    t = result.timings_ms
    stages = "  ".join(f"{name} {t[name]:.1f}" for name in ("embed", "search", "fetch", "rerank") if name in t)
    mode = "reranked" if result.reranked else "first stage only (no --reranker)"
    if len(result.stages) > 1:
        mode += " by a cascade: " + " > ".join(f"reranker {i} on the top {s['depth']} ({s['ms']:.0f} ms)"
                                               for i, s in enumerate(result.stages, start=1))
    last = result.stages[-1] if result.stages else None
    if last is not None and last["scored"] < last["depth"]:
        mode += f" ({last['scored']} of {last['depth']} scored by the deadline, the rest in their earlier order)"
    lines.append(f"{len(result.hits)} of {result.candidates} candidates, {mode}; ms: {stages}  total {t['total']:.1f}")
    return "\n".join(lines)


# -- crossrank eval ---------------------------------------------------------------------------

def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="retrieval quality on a labelled data set, first stage and reranked",
        description="Run the data set's queries through the index (and the reranker, when given) "
                    "and report nDCG@10, MRR@10, recall@10 and recall@100 for the first stage alone "
                    "and after reranking its --k candidates.",
        epilog="example: crossrank eval --index artifacts/semanlink-index --reranker models/starter-reranker-L4 "
               "--dataset semanlink --split test --limit 100")
    add_store_arguments(p, "the first stage (holding the data set's documents: index build --semanlink)")
    p.add_argument("--embedder", metavar="ART", help="bi-encoder artifact (default: the one recorded in the index)")
    add_reranking_arguments(p)
    p.add_argument("--dataset", default="semanlink", choices=["semanlink"], help="data set (default semanlink)")
    p.add_argument("--split", default="test", choices=["test", "dev", "train"], help="query split (default test)")
    p.add_argument("--limit", type=positive_int_arg, default=None, help="evaluate only the first N queries")
    p.add_argument("--k", type=positive_int_arg, default=100, help="first-stage candidates reranked (default 100)")
    p.add_argument("--batch", type=positive_int_arg, default=8, help="queries per pipeline call (default 8)")
    add_device_argument(p, "where models run")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from crossrank.evaluation.datasets import semanlink_queries

    embedder_path = locate_first_stage(args)
    check_reranking_args(args)
    embedder, retriever = open_first_stage(args, args.device, embedder_path)
    queries = semanlink_queries(args.split)[: args.limit]
    wanted = sorted({doc for q in queries for doc in q.relevant})
    present = sum(doc in retriever for doc in wanted[:20])
    if present == 0:
        raise InvalidArgumentError(f"the first stage holds none of the {args.dataset} documents (ids must be "
                                   f"their URLs): build it with `crossrank index build --semanlink --store ...`")
    pipeline = build_pipeline(embedder, retriever, args)
    start = time.perf_counter()
    figures = evaluate(pipeline, queries, k=args.k, batch=args.batch, progress=not args.json)
    seconds = time.perf_counter() - start
    report = {"dataset": args.dataset, "split": args.split, "queries": len(queries), "k": args.k,
              "index": args.index, "retriever": retriever.describe(), "rerankers": args.reranker or [], "depths": pipeline.depths,
              "seconds": round(seconds, 1), **figures}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.dataset} {args.split}: {len(queries)} queries, k={args.k}, {seconds:.1f} s")
    names = list(figures["first_stage"])
    print(f"{'stage':<13}" + "".join(f"{name:>12}" for name in names))
    for stage, values in figures.items():
        print(f"{stage:<13}" + "".join(f"{values[name]:>12.4f}" for name in names))
    if not args.reranker:
        print("(first stage only: pass --reranker ART to measure reranking)")
    return 0


def add_search_commands(subparsers) -> None:
    """Add ``index``, ``search`` and ``eval`` to the ``crossrank`` subparsers."""
    _add_index(subparsers)
    _add_search(subparsers)
    _add_eval(subparsers)
