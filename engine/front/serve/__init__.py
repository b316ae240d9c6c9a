"""``crossrank serve``: an HTTP server for the models (extra ``serve``: FastAPI, uvicorn,
prometheus-client).

One process holds one copy of each model and, with sharing on (the default), one scheduler
thread per model that merges concurrent requests into shared batches (``crossrank.scheduler``).
It speaks the APIs clients already use: Cohere ``/v1/rerank`` and ``/v2/rerank``, TEI
``/rerank`` and ``/embed``, OpenAI ``/v1/embeddings``; plus ``/v1/search`` (the two-stage
pipeline), ``/health``, ``/info``, ``/v1/models`` and ``/metrics`` (Prometheus).

This module only registers the subcommand; FastAPI is imported when the server starts, so the
rest of the CLI works without the extra.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from crossrank.errors import MissingFileError, UsageError
from crossrank.front.args import number_arg, positive_int_arg
from crossrank.front.serve.config import (DEFAULT_MAX_DOCUMENTS, DEFAULT_MAX_QUEUE_TOKENS, DEFAULT_MAX_REQUEST_BYTES,
                                          RayConfig, ServeConfig)

ENV_PREFIX = "CROSSRANK_"
port_arg = number_arg(int, lambda v: 0 <= v <= 65535, "expected a TCP port (0-65535), got {text}",
                      "expected a TCP port (0-65535), got {value}")


def _env(name: str, default=None):
    return os.environ.get(ENV_PREFIX + name, default)


def _flag_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve the models over HTTP (Cohere, TEI and OpenAI APIs, /v1/search, /metrics)",
        description="Serve a reranker (and optionally an embedder and an index) over HTTP on one process, "
                    "one copy of each model, concurrent requests merged into shared batches. Endpoints: "
                    "POST /v1/rerank, /v2/rerank (Cohere), /rerank (TEI, or Cohere with 'documents'), "
                    "/v1/embeddings, /embeddings (OpenAI), /embed (TEI), /v1/search (two stages, needs "
                    "--embedder and --index); GET /health, /info, /v1/models, /metrics. Every flag can also "
                    "be set by the environment variable CROSSRANK_<FLAG> (e.g. CROSSRANK_PORT=9000); a flag "
                    "given on the command line wins. Needs the 'serve' extra: pip install 'crossrank[serve]'.",
    )
    p.add_argument("--reranker", default=_env("RERANKER"), metavar="ART",
                   help="cross-encoder artifact folder ($CROSSRANK_RERANKER)")
    p.add_argument("--embedder", default=_env("EMBEDDER"), metavar="ART",
                   help="bi-encoder artifact folder for /v1/embeddings, /embed and /v1/search ($CROSSRANK_EMBEDDER)")
    p.add_argument("--index", default=_env("INDEX"), metavar="DIR",
                   help="index folder (crossrank index build) for /v1/search; needs --embedder ($CROSSRANK_INDEX)")
    p.add_argument("--store", default=_env("STORE"), metavar="URL|DIR",
                   help="first stage for /v1/search instead of --index: postgresql://USER@HOST/DB (pgvector), "
                        "milvus://HOST:PORT, or an index folder; needs --embedder; passwords from the URL, PGPASSWORD "
                        "or MILVUS_TOKEN, masked in logs ($CROSSRANK_STORE)")
    p.add_argument("--table", default=_env("TABLE"), metavar="NAME",
                   help="the store's table or collection (default crossrank_documents) ($CROSSRANK_TABLE)")
    p.add_argument("--hybrid", type=_flag_bool, nargs="?", const=True, default=_env("HYBRID", "0"), metavar="BOOL",
                   help="fuse dense and lexical candidates (RRF, k=60) for /v1/search ($CROSSRANK_HYBRID)")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_arg, default=_env("PORT", "8080"), help="TCP port (default 8080)")
    p.add_argument("--max-queue-tokens", type=positive_int_arg, default=_env("MAX_QUEUE_TOKENS", str(DEFAULT_MAX_QUEUE_TOKENS)),
                   metavar="N", help="real tokens that may wait in a model's queue; past it requests get 429 with "
                                     f"Retry-After (default {DEFAULT_MAX_QUEUE_TOKENS})")
    p.add_argument("--max-documents", type=positive_int_arg, default=_env("MAX_DOCUMENTS", str(DEFAULT_MAX_DOCUMENTS)),
                   metavar="N", help=f"documents or texts per request; more gets 413 (default {DEFAULT_MAX_DOCUMENTS})")
    p.add_argument("--max-request-bytes", type=positive_int_arg,
                   default=_env("MAX_REQUEST_BYTES", str(DEFAULT_MAX_REQUEST_BYTES)), metavar="N",
                   help=f"request body size; more gets 413 (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--shared", type=_flag_bool, default=_env("SHARED", "1"), metavar="BOOL",
                   help="merge concurrent requests into shared batches (default 1; 0: each request runs its own "
                        "batches, as the in-process API does)")
    p.add_argument("--workers", type=positive_int_arg, default=_env("WORKERS", "1"), metavar="N",
                   help="scheduler threads per model running batches side by side on its one session (default 1; "
                        "with --threads 1, one per core: see benchmarks/results/serve.md)")
    p.add_argument("--device", default=_env("DEVICE", "cpu"), choices=["cpu", "cuda"], help="execution provider (default cpu)")
    p.add_argument("--threads", type=positive_int_arg, default=_env("THREADS"),
                   help="intra-op threads per model (default: runtime.json, else physical cores)")
    ray = p.add_argument_group("on a Ray cluster (--ray; needs the 'ray' extra: pip install 'crossrank[ray]')")
    ray.add_argument("--ray", type=_flag_bool, nargs="?", const=True, default=_env("RAY", "0"), metavar="BOOL",
                     help="run the same app as a Ray Serve deployment: one copy of the models and one scheduler per "
                          "replica, Serve's HTTP proxy on --host:--port; intra-op threads per replica = the CPUs it "
                          "reserves (--threads, default 1); the artifacts must be at a path every node sees")
    ray.add_argument("--replicas", type=positive_int_arg, default=_env("REPLICAS", "1"), metavar="N",
                     help="replicas (with --max-replicas: the autoscaling floor) (default 1)")
    ray.add_argument("--max-replicas", type=positive_int_arg, default=_env("MAX_REPLICAS"), metavar="N",
                     help="autoscale between --replicas and N on requests in flight (default: a fixed --replicas)")
    ray.add_argument("--max-ongoing-requests", type=positive_int_arg, default=_env("MAX_ONGOING_REQUESTS"),
                     metavar="N", help="requests one replica takes at a time; more wait in Serve's router (default: "
                                       "--max-queue-tokens // 25000, a 1 x 100 request of TREC RAG passages)")
    ray.add_argument("--address", default=_env("ADDRESS"), metavar="ADDR",
                     help="Ray cluster to join ('auto': the one `ray start` runs on this machine; default: start "
                          "a local one for this command)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"],
                   help="log level; info logs one line per request (latency, documents, tokens) (default info)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    if not args.reranker and not args.embedder:
        raise UsageError("crossrank serve needs a model: --reranker ART and/or --embedder ART "
                         "(or CROSSRANK_RERANKER / CROSSRANK_EMBEDDER)")
    if args.index and args.store:
        raise UsageError("give --index or --store, not both")
    if (args.index or args.store) and not args.embedder:
        raise UsageError("--index/--store needs --embedder (the artifact that built it) to embed queries")
    store_folder = args.store if args.store and "://" not in args.store else None
    for flag, path in (("--reranker", args.reranker), ("--embedder", args.embedder), ("--index", args.index),
                       ("--store", store_folder)):
        if path and not Path(path).is_dir():
            raise MissingFileError(f"{flag} {path!r} is not a folder")
    config = ServeConfig(reranker=args.reranker, embedder=args.embedder, index=args.index, store=args.store,
                         table=args.table, hybrid=args.hybrid, host=args.host,
                         port=args.port, max_queue_tokens=args.max_queue_tokens, max_documents=args.max_documents,
                         max_request_bytes=args.max_request_bytes, shared=args.shared, workers=args.workers,
                         device=args.device, threads=args.threads)
    if args.ray:
        return _run_on_ray(args, config)
    if args.max_replicas is not None or args.address is not None or args.max_ongoing_requests is not None \
            or args.replicas != 1:
        raise UsageError("--replicas, --max-replicas, --max-ongoing-requests and --address lay out replicas on Ray: "
                         "add --ray")
    try:
        import uvicorn

        from crossrank.front.serve.app import build_app
    except ImportError as err:
        print(f"crossrank serve needs the 'serve' extra (pip install 'crossrank[serve]'): {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    app = build_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           access_log=False, lifespan="on"))
    models = app.state.models
    models.on_failure = lambda: setattr(server, "should_exit", True)  # a model that fails to load stops the server
    server.run()
    if models.error is not None:
        print(f"crossrank serve: error: {models.error}", file=sys.stderr)
        return 2
    return 0


def _run_on_ray(args, config: ServeConfig) -> int:
    try:
        from crossrank.front.ray.serve import run_on_ray
    except ImportError as err:
        print(f"crossrank serve --ray needs the 'ray' extra (pip install 'crossrank[ray]'): {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    return run_on_ray(config, RayConfig(replicas=args.replicas, max_replicas=args.max_replicas,
                                        max_ongoing_requests=args.max_ongoing_requests, address=args.address))
