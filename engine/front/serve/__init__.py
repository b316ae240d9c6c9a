"""``crossrank serve``: an HTTP server for the models (extra ``serve``: FastAPI, uvicorn,
prometheus-client).

One process holds one copy of each model and, with sharing on (the default), one scheduler
thread per model that merges concurrent requests into shared batches (``crossrank.scheduler``).
It speaks the APIs clients already use: Cohere ``/v1/rerank`` and ``/v2/rerank``, TEI
``/rerank`` and ``/embed``, OpenAI ``/v1/embeddings``; plus ``/v1/search`` (the two-stage
pipeline), ``/health``, ``/info``, ``/v1/models`` and ``/metrics`` (Prometheus).

Safe to expose (issue 24, docs/serving.md "Security"): API keys with per-key quotas
(``security``), bounded cost per request, time limits per connection and a drained shutdown
(``http``), TLS in process.

This module only registers the subcommand; FastAPI is imported when the server starts, so the
rest of the CLI works without the extra.
"""

from __future__ import annotations

import logging
import os
import sys

from crossrank.errors import UsageError
from crossrank.front.args import (env_default, flag_bool, names_arg, needs_extra, port_arg, positive_int_arg,
                                  seconds_arg, threads_arg, workers_arg)
from crossrank.front.ray.config import add_ray_arguments, ray_config_from_args
from crossrank.front.serve.config import (CORE_SHARING, DEFAULT_BODY_TIMEOUT_S, DEFAULT_CORE_SHARING,
                                          DEFAULT_HEADER_TIMEOUT_S, DEFAULT_KEEP_ALIVE_TIMEOUT_S,
                                          DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_DOCUMENTS, DEFAULT_MAX_QUEUE_TOKENS,
                                          DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_TOKENS,
                                          DEFAULT_SHUTDOWN_GRACE_S, ServeConfig)


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
                   help=f"documents or texts per request (more: 413), and candidates k per /v1/search (more: 422) "
                        f"(default {DEFAULT_MAX_DOCUMENTS})")
    p.add_argument("--max-request-bytes", type=positive_int_arg,
                   default=env_default("MAX_REQUEST_BYTES", str(DEFAULT_MAX_REQUEST_BYTES)), metavar="N",
                   help=f"request body size; more gets 413 (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--shared", type=flag_bool, default=env_default("SHARED", "1"), metavar="BOOL",
                   help="merge concurrent requests into shared batches (default 1; 0: each request runs its own "
                        "batches, as the in-process API does)")
    p.add_argument("--workers", type=workers_arg, default=env_default("WORKERS"), metavar="N",
                   help="scheduler threads per model, each running its own batches side by side on the model's one "
                        "session (default: the layout: the artifact's runtime.json \"serve\" layout from `crossrank "
                        "tune --concurrency`, else one per physical core; given alone, --threads fills the cores)")
    p.add_argument("--device", default=env_default("DEVICE", "cpu"), choices=["cpu", "cuda"],
                   help="execution provider (default cpu)")
    p.add_argument("--threads", type=threads_arg, default=env_default("THREADS"),
                   help="intra-op threads per worker (default: the layout's, 1 by the rule; given alone, --workers "
                        "fills the cores; with --shared 0: per request, default runtime.json's, else physical cores). "
                        "/info and the startup log say where each model's layout came from: argument, runtime.json "
                        "or rule (docs/serving.md \"Layout\")")
    p.add_argument("--core-sharing", default=env_default("CORE_SHARING", DEFAULT_CORE_SHARING), choices=CORE_SHARING,
                   help="how the models share the cores: shared = one budget of model calls for all of them, taken "
                        "in turn, first come first served; per-model = each model's calls run whenever they come "
                        f"and the OS shares the cores (default {DEFAULT_CORE_SHARING}: lower p95 under mixed load, "
                        "benchmarks/results/multimodel.md)")
    add_security_arguments(p)
    add_ray_arguments(p)
    p.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"],
                   help="log level; info logs one line per request (latency, documents, tokens) (default info)")
    p.set_defaults(func=run_serve)


def add_security_arguments(p) -> None:
    """Credentials, quotas, cost and time limits, input checks, TLS (docs/serving.md "Security")."""
    g = p.add_argument_group("credentials and quotas")
    g.add_argument("--api-key-file", default=env_default("API_KEY_FILE"), metavar="FILE",
                   help="API keys, one 'name:key' per line (optionally followed by tokens_per_second=N and "
                        "max_concurrent=N; 'name:sha256:HEX' gives a key by its SHA-256); clients send "
                        "'Authorization: Bearer KEY', logs and /metrics show the name. CROSSRANK_API_KEYS adds "
                        "keys (the same entries, separated by newlines or commas). With keys, every path but "
                        "/health (and /metrics) answers 401 without one ($CROSSRANK_API_KEY_FILE)")
    g.add_argument("--allow-unauthenticated", type=flag_bool, default=env_default("ALLOW_UNAUTHENTICATED", "0"),
                   metavar="BOOL", help="listen beyond loopback (--host) without API keys, with a warning: only when "
                                        "something in front checks callers (default 0: refused)")
    g.add_argument("--protect-metrics", type=flag_bool, default=env_default("PROTECT_METRICS", "0"), metavar="BOOL",
                   help="/metrics needs a key too (default 0: open, like /health)")
    g.add_argument("--key-tokens-per-second", type=positive_int_arg, default=env_default("KEY_TOKENS_PER_SECOND"),
                   metavar="N", help="per key: real model tokens per second (a token bucket of one second; past it: "
                                     "429 with Retry-After) unless its key-file line says (default: unlimited)")
    g.add_argument("--key-max-concurrent", type=positive_int_arg, default=env_default("KEY_MAX_CONCURRENT"),
                   metavar="N", help="per key: requests in flight (past it: 429) unless its key-file line says "
                                     "(default: unlimited)")
    g = p.add_argument_group("cost and time limits")
    g.add_argument("--max-request-tokens", type=positive_int_arg,
                   default=env_default("MAX_REQUEST_TOKENS", str(DEFAULT_MAX_REQUEST_TOKENS)), metavar="N",
                   help="real model tokens one request may run, counted before any runs; more: 413 "
                        f"(default {DEFAULT_MAX_REQUEST_TOKENS}). Long documents are read only as far as the "
                        "model's window needs")
    g.add_argument("--header-timeout", type=seconds_arg,
                   default=env_default("HEADER_TIMEOUT", str(DEFAULT_HEADER_TIMEOUT_S)), metavar="S",
                   help="a connection sends its request headers within S seconds of opening (or of its first byte "
                        f"after an answer), else 408 and closed (default {DEFAULT_HEADER_TIMEOUT_S:g})")
    g.add_argument("--body-timeout", type=seconds_arg, default=env_default("BODY_TIMEOUT", str(DEFAULT_BODY_TIMEOUT_S)),
                   metavar="S", help="a request's body arrives within S seconds of its headers, else 408 "
                                     f"(default {DEFAULT_BODY_TIMEOUT_S:g})")
    g.add_argument("--keep-alive-timeout", type=seconds_arg,
                   default=env_default("KEEP_ALIVE_TIMEOUT", str(DEFAULT_KEEP_ALIVE_TIMEOUT_S)), metavar="S",
                   help=f"an idle kept-alive connection is closed after S seconds "
                        f"(default {DEFAULT_KEEP_ALIVE_TIMEOUT_S:g})")
    g.add_argument("--max-connections", type=positive_int_arg, default=env_default("MAX_CONNECTIONS"), metavar="N",
                   help="open connections; past them a new one gets 503 and is closed (default "
                        f"{DEFAULT_MAX_CONNECTIONS}, or the open-file limit, raised to its hard limit, less 64 if "
                        "lower)")
    g.add_argument("--shutdown-grace", type=seconds_arg,
                   default=env_default("SHUTDOWN_GRACE", str(DEFAULT_SHUTDOWN_GRACE_S)), metavar="S",
                   help="on SIGTERM, requests in flight get S seconds to finish while new ones get 503; then the "
                        f"server exits 0 (default {DEFAULT_SHUTDOWN_GRACE_S:g})")
    g = p.add_argument_group("what is answered, to whom")
    g.add_argument("--allowed-hosts", type=names_arg, default=env_default("ALLOWED_HOSTS", ""), metavar="NAMES",
                   help="comma-separated Host header names this server answers to (others: 400), e.g. "
                        "'127.0.0.1,localhost' against DNS rebinding (default: any)")
    g.add_argument("--cors-origin", type=names_arg, default=env_default("CORS_ORIGIN", ""), metavar="ORIGINS",
                   help="comma-separated browser origins allowed to call the API (default: none, CORS off)")
    g.add_argument("--info-paths", type=flag_bool, default=env_default("INFO_PATHS", "0"), metavar="BOOL",
                   help="/info shows the artifacts' and the index's filesystem paths (default 0: names only)")
    g.add_argument("--openapi", type=flag_bool, default=env_default("OPENAPI", "1"), metavar="BOOL",
                   help="serve /openapi.json, behind the API keys when there are keys (default 1)")
    g = p.add_argument_group("TLS")
    g.add_argument("--ssl-certfile", default=env_default("SSL_CERTFILE"), metavar="FILE",
                   help="serve HTTPS with this certificate (chain, PEM); needs --ssl-keyfile")
    g.add_argument("--ssl-keyfile", default=env_default("SSL_KEYFILE"), metavar="FILE", help="its private key (PEM)")
    g.add_argument("--ssl-ca-certs", default=env_default("SSL_CA_CERTS"), metavar="FILE",
                   help="require client certificates signed by these CAs (PEM; mutual TLS)")


def run_serve(args) -> int:
    models = {what: getattr(args, what) or env_default(what.upper()) for what in ("reranker", "embedder", "cascade")}
    config = ServeConfig(**models, index=args.index, store=args.store, table=args.table, hybrid=args.hybrid,
                         host=args.host,
                         port=args.port, max_queue_tokens=args.max_queue_tokens, max_documents=args.max_documents,
                         max_request_bytes=args.max_request_bytes, shared=args.shared, workers=args.workers,
                         device=args.device, threads=args.threads, core_sharing=args.core_sharing,
                         api_key_file=args.api_key_file,
                         protect_metrics=args.protect_metrics, key_tokens_per_second=args.key_tokens_per_second,
                         key_max_concurrent=args.key_max_concurrent, max_request_tokens=args.max_request_tokens,
                         body_timeout=args.body_timeout, allowed_hosts=args.allowed_hosts,
                         cors_origins=args.cors_origin, info_paths=args.info_paths, openapi=args.openapi)
    config.require_models()
    ray_config = ray_config_from_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    from crossrank.front.serve.security import KEYS_ENV, check_exposure, load_api_keys

    keys = load_api_keys(config.api_key_file)
    check_exposure(args.host, keys, args.allow_unauthenticated)
    if ray_config is not None:
        if os.environ.get(KEYS_ENV, "").strip():
            raise UsageError(f"with --ray, give the keys in --api-key-file (a path every node sees): {KEYS_ENV} stays "
                             f"in this process, the replicas would not see them")
        with needs_extra("ray"):
            from crossrank.front.ray.serve import run_on_ray
        return run_on_ray(config, ray_config)
    with needs_extra("serve"):
        from crossrank.front.serve import http
        from crossrank.front.serve.app import build_app
    limits = http.HttpLimits(header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                             max_connections=args.max_connections, shutdown_grace=args.shutdown_grace,
                             ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                             ssl_ca_certs=args.ssl_ca_certs)
    app = build_app(config, keys=keys)
    if keys:
        logging.getLogger("crossrank.serve").info("%d API key(s): %s", len(keys), ", ".join(keys.names))
    server = http.build_server(app, args.host, args.port, limits)
    models = app.state.models
    models.on_failure = lambda: setattr(server, "should_exit", True)  # a model that fails to load stops the server
    server.run()
    if models.error is not None:
        print(f"crossrank serve: error: {models.error}", file=sys.stderr)
        return 2
    return 0
