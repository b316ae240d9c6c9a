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

import logging
import sys

from crossrank.front.args import (env_default, flag_bool, needs_extra, port_arg, positive_int_arg, threads_arg,
                                  workers_arg)
from crossrank.front.ray.config import add_ray_arguments, ray_config_from_args
from crossrank.front.serve.config import (CORE_SHARING, DEFAULT_CORE_SHARING, DEFAULT_MAX_DOCUMENTS,
                                         DEFAULT_MAX_QUEUE_TOKENS, DEFAULT_MAX_REQUEST_BYTES, ServeConfig)


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve the models over HTTP (Cohere, TEI and OpenAI APIs, /v1/search, /metrics)",
        description="Serve rerankers (and optionally embedders, cascades and an index) over HTTP on one process, "
                    "one copy of each model, concurrent requests merged into shared batches; a request's 'model' "
                    "field picks the model (absent: the first of its kind; unknown: 404 listing them). Endpoints: "
                    "POST /v1/rerank, /v2/rerank (Cohere), /rerank (TEI, or Cohere with 'documents'), "
                    "/v1/embeddings, /embeddings (OpenAI), /embed (TEI), /v1/search (two stages, needs "
                    "--embedder and --index); GET /health, /info, /v1/models, /metrics. Every flag can also "
                    "be set by the environment variable CROSSRANK_<FLAG> (e.g. CROSSRANK_PORT=9000); a flag "
                    "given on the command line wins. Needs the 'serve' extra: pip install 'crossrank[serve]'.",
    )
    p.add_argument("--reranker", action="append", default=None, metavar="[NAME=]ART",
                   help="cross-encoder artifact folder, named NAME (default: the folder's name) for the requests' "
                        "'model' field; repeat it to serve several, the first being the default "
                        "($CROSSRANK_RERANKER: comma-separated)")
    p.add_argument("--embedder", action="append", default=None, metavar="[NAME=]ART",
                   help="bi-encoder artifact folder for /v1/embeddings, /embed and /v1/search, named as --reranker; "
                        "repeatable, the first being the default and the one /v1/search embeds with "
                        "($CROSSRANK_EMBEDDER: comma-separated)")
    p.add_argument("--cascade", action="append", default=None, metavar="NAME=A@N>B@M",
                   help="a cascade of served rerankers as the model NAME: A reranks the first N documents (or "
                        "/v1/search candidates; @N may be left out: all), B the M best of those, e.g. "
                        "fast=L4@50>starter@10; repeatable ($CROSSRANK_CASCADE: comma-separated)")
    p.add_argument("--index", default=env_default("INDEX"), metavar="DIR",
                   help="index folder (crossrank index build) for /v1/search; needs --embedder, the first being "
                        "the one that built it ($CROSSRANK_INDEX)")
    p.add_argument("--store", default=env_default("STORE"), metavar="URL|DIR",
                   help="first stage for /v1/search instead of --index: postgresql://USER@HOST/DB (pgvector), "
                        "milvus://HOST:PORT, or an index folder; needs --embedder (the first); passwords from the URL, PGPASSWORD "
                        "or MILVUS_TOKEN, masked in logs ($CROSSRANK_STORE)")
    p.add_argument("--table", default=env_default("TABLE"), metavar="NAME",
                   help="the store's table or collection (default crossrank_documents) ($CROSSRANK_TABLE)")
    p.add_argument("--hybrid", type=flag_bool, nargs="?", const=True, default=env_default("HYBRID", "0"), metavar="BOOL",
                   help="fuse dense and lexical candidates (RRF, k=60) for /v1/search ($CROSSRANK_HYBRID)")
    p.add_argument("--host", default=env_default("HOST", "127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_arg, default=env_default("PORT", "8080"), help="TCP port (default 8080)")
    p.add_argument("--max-queue-tokens", type=positive_int_arg,
                   default=env_default("MAX_QUEUE_TOKENS", str(DEFAULT_MAX_QUEUE_TOKENS)), metavar="N",
                   help="real tokens that may wait in a model's queue; past it requests get 429 with Retry-After "
                        f"(default {DEFAULT_MAX_QUEUE_TOKENS})")
    p.add_argument("--max-documents", type=positive_int_arg,
                   default=env_default("MAX_DOCUMENTS", str(DEFAULT_MAX_DOCUMENTS)), metavar="N",
                   help=f"documents or texts per request; more gets 413 (default {DEFAULT_MAX_DOCUMENTS})")
    p.add_argument("--max-request-bytes", type=positive_int_arg,
                   default=env_default("MAX_REQUEST_BYTES", str(DEFAULT_MAX_REQUEST_BYTES)), metavar="N",
                   help=f"request body size; more gets 413 (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--shared", type=flag_bool, default=env_default("SHARED", "1"), metavar="BOOL",
                   help="merge concurrent requests into shared batches (default 1; 0: each request runs its own "
                        "batches, as the in-process API does)")
    p.add_argument("--workers", type=workers_arg, default=env_default("WORKERS", "1"), metavar="N",
                   help="scheduler threads per model running batches side by side on its one session (default 1; "
                        "with --threads 1, one per core: see benchmarks/results/serve.md)")
    p.add_argument("--device", default=env_default("DEVICE", "cpu"), choices=["cpu", "cuda"],
                   help="execution provider (default cpu)")
    p.add_argument("--threads", type=threads_arg, default=env_default("THREADS"),
                   help="intra-op threads per model (default: runtime.json, else physical cores)")
    p.add_argument("--core-sharing", default=env_default("CORE_SHARING", DEFAULT_CORE_SHARING), choices=CORE_SHARING,
                   help="how the models share the cores: shared = one budget of model calls for all of them, taken "
                        "in turn, first come first served; per-model = each model's calls run whenever they come "
                        f"and the OS shares the cores (default {DEFAULT_CORE_SHARING}: lower p95 under mixed load, "
                        "benchmarks/results/multimodel.md)")
    add_ray_arguments(p)
    p.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"],
                   help="log level; info logs one line per request (latency, documents, tokens) (default info)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    models = {what: getattr(args, what) or env_default(what.upper()) for what in ("reranker", "embedder", "cascade")}
    config = ServeConfig(**models, index=args.index, store=args.store, table=args.table, hybrid=args.hybrid,
                         host=args.host,
                         port=args.port, max_queue_tokens=args.max_queue_tokens, max_documents=args.max_documents,
                         max_request_bytes=args.max_request_bytes, shared=args.shared, workers=args.workers,
                         device=args.device, threads=args.threads, core_sharing=args.core_sharing)
    config.require_models()
    ray_config = ray_config_from_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if ray_config is not None:
        with needs_extra("ray"):
            from crossrank.front.ray.serve import run_on_ray
        return run_on_ray(config, ray_config)
    with needs_extra("serve"):
        import uvicorn

        from crossrank.front.serve.app import build_app
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
