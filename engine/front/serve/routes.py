"""The server's routes, each a module-level function: the HTTP plumbing (``handle``), the jobs
that run on a thread of their own (``*_job``: parse, call the model, shape the answer), and the
route functions that tie an endpoint to its job and error family.

A route reads what it needs from ``request.app.state`` (``crossrank.front.serve.app.build_app``
puts ``config``, ``models``, ``metrics`` there). A job gets a ``Call`` (those parts plus the
error family) and the raw body, and returns an ``Outcome``; any exception it raises is answered
through the one mapping (``errors.error_reply``) in the family's envelope
(``protocols.error_body``). A client that disconnects before its answer cancels the call, and
its rows still queued are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from crossrank.front.serve import protocols as p
from crossrank.front.serve.errors import CLIENT_GONE, ClientGone, ErrorReply, RequestTimeout, TooLarge, error_reply
from crossrank.front.serve.security import request_key
from crossrank.scheduler import run_async
from crossrank.version import __version__

log = logging.getLogger("crossrank.serve")
router = APIRouter()


@dataclass
class Outcome:
    """A job's answer: the body, and for the log and metrics the model that answered, the
    documents and tokens it ran, and how many documents were truncated by how many tokens."""

    body: bytes
    documents: int = 0
    tokens: int = 0
    model: str = "-"
    truncated: int = 0
    dropped_tokens: int = 0


@dataclass
class Call:
    """One request as its job sees it: the server's parts, and the API family whose error envelope
    answers a failure (a job may settle it once it has read the body: ``/rerank``)."""

    config: Any      # ServeConfig
    models: Any      # app.Models
    metrics: Any     # metrics.Metrics
    family: str


Job = Callable[[Call, bytes], Outcome]


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# -- HTTP plumbing (on the event loop) -------------------------------------------------------------

async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, at most ``limit`` bytes (TooLarge beyond, from Content-Length or while reading),
    whole within ``timeout_s`` seconds (RequestTimeout, 408: a slow or lying client); ClientGone when
    the client closes the connection first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body has {declared} bytes, more than this server accepts ({limit}; crossrank serve "
                       f"--max-request-bytes)", "body")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"body has more than {limit} bytes, more than this server accepts (crossrank "
                                   f"serve --max-request-bytes)", "body")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s ({size} bytes of "
                             f"{declared or 'an unknown number'}; crossrank serve --body-timeout)", "body") from None
    except ClientDisconnect:
        raise ClientGone("the client closed the connection before its body arrived") from None
    return b"".join(chunks)


async def until_disconnect(request: Request, work: Awaitable):
    """The work's result, or None when the client went away first (the work is then cancelled)."""
    work = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(request.receive())
    try:
        while True:
            finished, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work in finished:
                return work.result()
            if gone.result().get("type") == "http.disconnect":
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                return None
            gone = asyncio.ensure_future(request.receive())
    finally:
        gone.cancel()


async def handle(request: Request, endpoint: str, family: str, job: Job) -> Response:
    """Read the body, run ``job`` on its own thread, answer a failure in the family's envelope;
    log one line and record the metrics."""
    state = request.app.state
    call = Call(state.config, state.models, state.metrics, family)
    key = request_key(request)
    started = time.perf_counter()
    outcome, reply, lease = None, None, None
    try:
        call.models.check_ready()
        lease = state.quotas.admit(key)
        raw = await read_body(request, call.config.max_request_bytes, call.config.body_timeout)
        outcome = await until_disconnect(request, run_async(job, call, raw))
        if outcome is None:
            reply = ErrorReply(CLIENT_GONE, "the client closed the connection; its queued rows were dropped")
    except Exception as err:
        reply = error_reply(err)
        if reply.status == 500:  # a bug: answer 500, keep the traceback in the log
            log.error("%s %s failed", request.method, request.url.path, exc_info=err)
    finally:
        if lease is not None:
            lease.release(outcome.tokens if outcome else 0)
    _record(call, request, endpoint, reply.status if reply else 200, time.perf_counter() - started, outcome, key)
    if reply is None:
        return Response(outcome.body, media_type="application/json")
    return JSONResponse(p.error_body(call.family, reply.status, reply.message, reply.param),
                        status_code=reply.status, headers=reply.headers)


def _record(call: Call, request: Request, endpoint: str, status: int, seconds: float, outcome: Outcome | None,
            key=None):
    """Metrics and the request's log line (the API key by its name, never the key)."""
    metrics = call.metrics
    if status == 429:
        metrics.overloaded.labels(endpoint).inc()
    metrics.requests.labels(endpoint, str(status)).inc()
    metrics.latency.labels(endpoint).observe(seconds)
    if outcome is not None:
        metrics.documents.labels(endpoint).observe(outcome.documents)
    if key is not None:
        metrics.key_requests.labels(key.name, str(status)).inc()
    outcome = outcome or Outcome(b"")
    log.info("%s %s %d %.1f ms model=%s documents=%d tokens=%d truncated=%d dropped_tokens=%d%s", request.method,
             request.url.path, status, seconds * 1e3, outcome.model, outcome.documents, outcome.tokens,
             outcome.truncated, outcome.dropped_tokens, f" key={key.name}" if key is not None else "")


# -- jobs (on a thread of their own, never on the event loop) --------------------------------------

def run_rerank(call: Call, request: p.RerankRequest) -> Outcome:
    """Rerank a parsed request with the model it names (tokenized once, in the core; its token
    and truncation counts come back with it)."""
    served = call.models.reranker(request.model)
    call.models.registry.check_documents(served, len(request.texts))
    ranked = served.model.rerank(request.query, request.texts, top_n=request.top_n, return_documents=False,
                                 raw_scores=request.raw_scores, max_tokens_per_doc=request.max_tokens_per_doc,
                                 max_chunks_per_doc=request.max_chunks_per_doc, return_evidence=request.return_evidence,
                                 token_budget=call.config.max_request_tokens, instruction=request.instruction)
    call.metrics.tokens.labels(served.name).inc(ranked.tokens)
    call.metrics.truncated.labels(served.name).inc(ranked.truncated)
    call.metrics.dropped_tokens.labels(served.name).inc(ranked.dropped_tokens)
    return Outcome(_json(p.rerank_response(request, ranked, ranked.tokens)), len(request.texts), ranked.tokens,
                   served.name, ranked.truncated, ranked.dropped_tokens)


def cohere_v1_rerank_job(call: Call, raw: bytes) -> Outcome:
    return run_rerank(call, p.parse_cohere_rerank(p.parse_body(raw), call.config.max_documents, 1))


def cohere_v2_rerank_job(call: Call, raw: bytes) -> Outcome:
    return run_rerank(call, p.parse_cohere_rerank(p.parse_body(raw), call.config.max_documents, 2))


def tei_or_cohere_rerank_job(call: Call, raw: bytes) -> Outcome:
    """``/rerank``: TEI when the body has "texts", Cohere v1 (and its envelope) when it has "documents"."""
    body = p.parse_body(raw)
    if "documents" in body and "texts" not in body:
        call.family = p.COHERE
        return run_rerank(call, p.parse_cohere_rerank(body, call.config.max_documents, 1))
    return run_rerank(call, p.parse_tei_rerank(body, call.config.max_documents))


def run_embed(call: Call, served, request: p.EmbedRequest) -> Outcome:
    """Embed a parsed request (tokenized once, in the core; its token count comes back with it)."""
    vectors, tokens, truncated, dropped = served.model.embed_with_usage(request.texts,
                                                                       token_budget=call.config.max_request_tokens)
    call.metrics.tokens.labels(served.name).inc(tokens)
    call.metrics.truncated.labels(served.name).inc(truncated)
    call.metrics.dropped_tokens.labels(served.name).inc(dropped)
    return Outcome(_json(p.embed_response(request, vectors, tokens, served.name)), len(request.texts), tokens,
                   served.name, truncated, dropped)


def openai_embeddings_job(call: Call, raw: bytes) -> Outcome:
    request = p.parse_openai_embeddings(p.parse_body(raw), call.config.max_documents)
    served = call.models.embedder(request.model)
    return run_embed(call, served, p.check_dimensions(request, served.model.dim))


def tei_embed_job(call: Call, raw: bytes) -> Outcome:
    request = p.parse_tei_embed(p.parse_body(raw), call.config.max_documents)
    return run_embed(call, call.models.embedder(request.model), request)


def search_job(call: Call, raw: bytes) -> Outcome:
    request = p.parse_search(p.parse_body(raw), call.config.max_documents)
    pipeline = call.models.pipeline(request.model)
    result = pipeline.search(request.query, k=request.k, top_n=request.top_n, deadline_ms=request.deadline_ms)
    model = request.model or call.models.registry.default("rerank") or "-"  # "-": the first stage alone
    return Outcome(_json(p.search_response(result)), result.candidates, model=model)


# -- routes -----------------------------------------------------------------------------------------

@router.post("/v1/rerank")
async def rerank_v1(request: Request) -> Response:
    return await handle(request, "/v1/rerank", p.COHERE, cohere_v1_rerank_job)


@router.post("/v2/rerank")
async def rerank_v2(request: Request) -> Response:
    return await handle(request, "/v2/rerank", p.COHERE, cohere_v2_rerank_job)


@router.post("/rerank")
async def rerank_tei_or_cohere(request: Request) -> Response:
    return await handle(request, "/rerank", p.TEI, tei_or_cohere_rerank_job)


@router.post("/v1/embeddings")
async def embeddings_v1(request: Request) -> Response:
    return await handle(request, "/v1/embeddings", p.OPENAI, openai_embeddings_job)


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return await handle(request, "/embeddings", p.OPENAI, openai_embeddings_job)


@router.post("/embed")
async def embed(request: Request) -> Response:
    return await handle(request, "/embed", p.TEI, tei_embed_job)


@router.post("/v1/search")
async def search(request: Request) -> Response:
    return await handle(request, "/v1/search", p.COHERE, search_job)


@router.get("/health")
async def health(request: Request):
    models, details = request.app.state.models, request.app.state.health_details
    if models.error is not None:
        return JSONResponse({"status": "failed", "message": str(models.error)}, status_code=503)
    if not models.ready.is_set():
        return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ok", **(await details() if details is not None else {})}


def first_stage_id(config) -> str:
    """The first stage as /info names it without --info-paths: a folder's name, or a store's kind and
    table (no path, no host)."""
    from crossrank.stores.common import DEFAULT_TABLE

    where = config.store or config.index
    name = f"{where.split('://')[0]} table {config.table or DEFAULT_TABLE}" if "://" in where else Path(where).name
    return f"{name} (hybrid)" if config.hybrid else name


@router.get("/info")
async def info(request: Request):
    config, models = request.app.state.config, request.app.state.models
    registry, paths = models.registry, config.info_paths  # without --info-paths: names, no filesystem path
    first_stage = config.first_stage_name()
    index = None
    if first_stage:
        index = {"path": first_stage} if paths else {"id": first_stage_id(config)}
        if registry.retriever is not None:
            index["documents"] = len(registry.retriever)
    info = {"name": "crossrank", "version": __version__, "ready": models.ready.is_set(),
            "models": {name: {**served.describe(paths), "default": name == registry.default(served.family)}
                       for name, served in registry.models.items()},
            "index": index,
            "limits": {"max_queue_tokens": config.max_queue_tokens, "max_documents": config.max_documents,
                       "max_request_bytes": config.max_request_bytes},
            "shared": config.shared, "core_sharing": config.core_sharing, "device": config.device}
    if paths:
        info["configured"] = {"reranker": config.reranker, "embedder": config.embedder, "cascade": config.cascade}
    return info


@router.get("/v1/models")
async def list_models(request: Request):
    config, models = request.app.state.config, request.app.state.models
    created = int(models.loaded_at or time.time())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "crossrank", "kind": kind}
            for kind in ("reranker", "cascade", "embedder") for name in getattr(config, kind)]
    return {"object": "list", "data": data}


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


__all__ = ["Call", "Outcome", "handle", "router"]
