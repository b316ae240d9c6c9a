"""The FastAPI app: one process, one copy of each model, one shared scheduler per model.

Each request's body is read on the event loop (bounded by ``max_request_bytes``), then parsed,
validated, tokenized, run and serialised on a thread of its own (``crossrank.scheduler.run_async``):
ONNX Runtime never runs on the event loop, and with sharing on every request's rows go through
the model's one worker thread, batched with the other requests'. A client that disconnects
before its answer cancels the call, and its rows still queued are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from crossrank.embedder import Embedder
from crossrank.errors import InvalidArgumentError, OverloadedError
from crossrank.front.serve import protocols as p
from crossrank.front.serve.config import ServeConfig
from crossrank.front.serve.metrics import Metrics
from crossrank.index import Index
from crossrank.pipeline import Pipeline
from crossrank.reranker import Reranker
from crossrank.scheduler import run_async
from crossrank.version import __version__

log = logging.getLogger("crossrank.serve")

WARMUP_QUERY = "warm up"


class NotReady(Exception):
    pass


class NotConfigured(Exception):
    pass


class Models:
    """The models a server holds, loaded (and warmed with one small call each) off the event loop."""

    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.reranker: Reranker | None = None
        self.embedder: Embedder | None = None
        self.index: Index | None = None
        self.pipeline: Pipeline | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loaded_at: float | None = None
        self.on_failure: Callable[[], None] | None = None  # crossrank serve: stop the server

    def load(self) -> None:
        c = self.config
        shared = {"shared": True, "max_queue_tokens": c.max_queue_tokens, "workers": c.workers} if c.shared else {}
        try:
            if c.reranker:
                self.reranker = Reranker(c.reranker, device=c.device, threads=c.threads, **shared)
                self.reranker.rerank(WARMUP_QUERY, [WARMUP_QUERY])
                self.metrics.watch_model("reranker", self.reranker)
            if c.embedder:
                self.embedder = Embedder(c.embedder, device=c.device, threads=c.threads, **shared)
                self.embedder.embed([WARMUP_QUERY])
                self.metrics.watch_model("embedder", self.embedder)
            if c.index:
                self.index = Index.load(c.index, view=True, embedder=self.embedder)
                self.pipeline = Pipeline(self.embedder, self.index, self.reranker)
            self.loaded_at = time.time()
            self.ready.set()
            log.info("ready: %s", ", ".join(f"{k} {v}" for k, v in
                                            (("reranker", c.reranker), ("embedder", c.embedder), ("index", c.index)) if v))
        except BaseException as err:  # reported by /health and the serve command
            self.error = err
            log.error("loading the models failed: %s", err)
            if self.on_failure is not None:
                self.on_failure()

    def close(self) -> None:
        for model in (self.reranker, self.embedder):
            if model is not None:
                model.close()

    def check_ready(self) -> None:
        if self.error is not None:
            raise NotReady(f"the models failed to load: {self.error}")
        if not self.ready.is_set():
            raise NotReady("the models are still loading; retry when GET /health answers 200")

    def need(self, what: str):
        self.check_ready()
        model = getattr(self, what)
        if model is None:
            flag = {"reranker": "--reranker ART", "embedder": "--embedder ART", "pipeline": "--index DIR"}[what]
            raise NotConfigured(f"this server has no {what if what != 'pipeline' else 'index'}: start crossrank serve "
                                f"with {flag}")
        return model

    def model_info(self, what: str) -> dict | None:
        model = getattr(self, what)
        path = getattr(self.config, what)
        if path is None:
            return None
        info: dict[str, Any] = {"id": Path(path).name, "path": str(path), "loaded": model is not None}
        if model is not None:
            m = model.artifact.manifest
            info.update(kind=m["kind"], precision=m["precision"], max_length=model.max_length,
                        source=m.get("source", {}).get("name"),
                        int8_recipe=(m.get("quantization") or {}).get("name"),
                        settings={**model.runner.settings.as_dict(), "origin": model.settings_origin},
                        shared=model.scheduler is not None,
                        max_queue_tokens=model.scheduler.max_queue_tokens if model.scheduler else None,
                        workers=model.scheduler.workers if model.scheduler else None)
            if what == "embedder":
                info["dim"] = model.dim
            else:
                info["family"] = m.get("family", "bert")
                info["instruction"] = {"accepted": model.accepts_instruction,
                                       "default": (m.get("prompt") or {}).get("default_instruction")}
        return info


# -- model work (on a thread of its own, never on the event loop) ----------------------------------

def count_and_cut_pairs(reranker: Reranker, query: str, texts: list[str],
                        max_tokens_per_doc: int | None, instruction: str | None = None) -> tuple[list[str], int]:
    """The documents cut at their ``max_tokens_per_doc``-th token (when given and shorter than the
    window allows), and the real tokens of the pairs the reranker will run."""
    tok = reranker.tokenizer
    query_ids = tok.encode_queries([query], instruction)
    encodings = tok.document_encodings(texts) if texts else []
    head = len(tok.document_head)  # a prompt template's text before the document (in the offsets)
    doc_ids = []
    for i, encoding in enumerate(encodings):
        ids = encoding.ids
        if max_tokens_per_doc is not None and len(ids) > max_tokens_per_doc:
            texts[i] = texts[i][: max(0, encoding.offsets[max_tokens_per_doc - 1][1] - head)]
            ids = ids[:max_tokens_per_doc]
        doc_ids.append(np.asarray(ids, dtype=np.int64))
    overlap = reranker.chunk_overlap if reranker.long_documents == "chunk" else None
    rows = tok.pair_rows(query_ids, np.zeros(len(texts), dtype=np.int64), doc_ids, chunk_overlap=overlap)
    return texts, int(rows.lengths.sum())


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


@dataclass
class Outcome:
    body: bytes
    documents: int = 0
    tokens: int = 0


def build_app(config: ServeConfig, health_details: Callable[[], Awaitable[dict]] | None = None) -> FastAPI:
    """The app of one server. Its models load on a thread when it starts, unless whoever built it
    loaded them already (``app.state.models.load()``: a Ray Serve replica does, so that it is
    ready only once they are). ``health_details``: awaited by ``GET /health`` once the models are
    ready, its keys added to the answer (a Ray replica adds its deployment's replica count)."""
    metrics = Metrics()
    models = Models(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not models.ready.is_set() and models.error is None:
            threading.Thread(target=models.load, name="crossrank-load", daemon=True).start()
        yield
        models.close()

    app = FastAPI(title="crossrank", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.models = models
    app.state.metrics = metrics

    async def read_body(request: Request) -> bytes:
        limit = config.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise p.TooLarge(f"body has {declared} bytes, more than this server accepts ({limit}; crossrank serve "
                             f"--max-request-bytes)", "body")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise p.TooLarge(f"body has more than {limit} bytes, more than this server accepts (crossrank serve "
                                 f"--max-request-bytes)", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def until_disconnect(request: Request, work: asyncio.Future):
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

    async def handle(request: Request, endpoint: str, family: str, job: Callable[[bytes], Outcome]) -> Response:
        """Read the body, run ``job(body)`` on its own thread, map failures to the family's envelope;
        log one line and record the metrics."""
        started = time.perf_counter()
        status, outcome, headers, param, error = 200, None, {}, None, None
        try:
            models.check_ready()
            raw = await read_body(request)
            outcome = await until_disconnect(request, run_async(job, raw))
            if outcome is None:
                status, message = 499, "the client closed the connection; its queued rows were dropped"
        except p.BadRequest as err:
            status, message, param, error = err.status, str(err), err.param, err
        except OverloadedError as err:
            status, message, error = 429, str(err), err
            headers["Retry-After"] = str(math.ceil(err.retry_after_s))
            metrics.overloaded.labels(endpoint).inc()
        except NotReady as err:
            status, message = 503, str(err)
        except NotConfigured as err:
            status, message = 404, str(err)
        except InvalidArgumentError as err:  # the core's checks name the argument
            status, message, error = 422, str(err), err
        except Exception as err:  # a bug: answer 500, keep the traceback in the log
            log.exception("%s %s failed", request.method, request.url.path)
            status, message = 500, f"internal error: {type(err).__name__}: {err}"
        elapsed = time.perf_counter() - started
        documents = outcome.documents if outcome else 0
        tokens = outcome.tokens if outcome else 0
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        if outcome is not None:
            metrics.documents.labels(endpoint).observe(documents)
        log.info("%s %s %d %.1f ms documents=%d tokens=%d", request.method, request.url.path, status,
                 elapsed * 1e3, documents, tokens)
        if status == 200:
            return Response(outcome.body, media_type="application/json")
        family = getattr(error, "family", family)  # /rerank: the envelope of the shape the client sent
        return JSONResponse(p.error_body(family, status, message, param), status_code=status, headers=headers)

    # -- jobs ---------------------------------------------------------------------------------
    def rerank_job(parse: Callable[[dict], p.RerankRequest]) -> Callable[[bytes], Outcome]:
        def job(raw: bytes) -> Outcome:
            request = parse(p.parse_body(raw))
            reranker = models.need("reranker")
            texts, tokens = count_and_cut_pairs(reranker, request.query, list(request.texts),
                                                request.max_tokens_per_doc, request.instruction)
            metrics.tokens.labels("reranker").inc(tokens)
            ranked = reranker.rerank(request.query, texts, top_n=request.top_n, return_documents=False,
                                     raw_scores=request.raw_scores, instruction=request.instruction)
            return Outcome(_json(p.rerank_response(request, ranked, tokens)), len(texts), tokens)

        return job

    def embed_job(parse: Callable[[dict, int], p.EmbedRequest]) -> Callable[[bytes], Outcome]:
        def job(raw: bytes) -> Outcome:
            body = p.parse_body(raw)
            embedder = models.need("embedder")
            request = parse(body, embedder.dim)
            tokens = int(embedder.tokenizer.rows(request.texts).lengths.sum())
            metrics.tokens.labels("embedder").inc(tokens)
            vectors = embedder.embed(request.texts)
            name = Path(config.embedder).name
            return Outcome(_json(p.embed_response(request, vectors, tokens, name)), len(request.texts), tokens)

        return job

    def search_job(raw: bytes) -> Outcome:
        request = p.parse_search(p.parse_body(raw))
        pipeline = models.need("pipeline")
        result = pipeline.search(request.query, k=request.k, top_n=request.top_n, deadline_ms=request.deadline_ms)
        return Outcome(_json(p.search_response(result)), result.candidates)

    max_docs = config.max_documents
    cohere_v1 = rerank_job(lambda body: p.parse_cohere_rerank(body, max_docs, 1))
    cohere_v2 = rerank_job(lambda body: p.parse_cohere_rerank(body, max_docs, 2))
    tei_rerank = rerank_job(lambda body: p.parse_tei_rerank(body, max_docs))
    openai_embed = embed_job(lambda body, dim: p.parse_openai_embeddings(body, max_docs, dim))
    tei_embed = embed_job(lambda body, dim: p.parse_tei_embed(body, max_docs))

    # -- routes -------------------------------------------------------------------------------
    @app.post("/v1/rerank")
    async def rerank_v1(request: Request):
        return await handle(request, "/v1/rerank", p.COHERE, cohere_v1)

    @app.post("/v2/rerank")
    async def rerank_v2(request: Request):
        return await handle(request, "/v2/rerank", p.COHERE, cohere_v2)

    @app.post("/rerank")
    async def rerank_any(request: Request):
        """TEI when the body has "texts", Cohere v1 when it has "documents"."""
        def job(raw: bytes) -> Outcome:
            body = p.parse_body(raw)
            cohere = "documents" in body and "texts" not in body
            try:
                return (cohere_v1 if cohere else tei_rerank)(raw)
            except Exception as err:
                err.family = p.COHERE if cohere else p.TEI
                raise

        return await handle(request, "/rerank", p.TEI, job)

    @app.post("/v1/embeddings")
    async def embeddings_v1(request: Request):
        return await handle(request, "/v1/embeddings", p.OPENAI, openai_embed)

    @app.post("/embeddings")
    async def embeddings(request: Request):
        return await handle(request, "/embeddings", p.OPENAI, openai_embed)

    @app.post("/embed")
    async def embed(request: Request):
        return await handle(request, "/embed", p.TEI, tei_embed)

    @app.post("/v1/search")
    async def search(request: Request):
        return await handle(request, "/v1/search", p.COHERE, search_job)

    @app.get("/health")
    async def health():
        if models.error is not None:
            return JSONResponse({"status": "failed", "message": str(models.error)}, status_code=503)
        if not models.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", **(await health_details() if health_details is not None else {})}

    @app.get("/info")
    async def info():
        return {"name": "crossrank", "version": __version__, "ready": models.ready.is_set(),
                "models": {what: models.model_info(what) for what in ("reranker", "embedder")},
                "index": ({"path": config.index, "documents": len(models.index)} if models.index is not None
                          else ({"path": config.index} if config.index else None)),
                "limits": {"max_queue_tokens": config.max_queue_tokens, "max_documents": config.max_documents,
                           "max_request_bytes": config.max_request_bytes},
                "shared": config.shared, "device": config.device}

    @app.get("/v1/models")
    async def list_models():
        created = int(models.loaded_at or time.time())
        data = [{"id": Path(path).name, "object": "model", "created": created, "owned_by": "crossrank", "kind": kind}
                for kind, path in (("reranker", config.reranker), ("embedder", config.embedder)) if path]
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
