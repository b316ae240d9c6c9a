"""The FastAPI app: one process, one copy of each model, one shared scheduler per model.

``build_app(config)`` makes the app: the routes (``crossrank.front.serve.routes``, module-level
functions you can import and test alone), and on ``app.state`` the server's parts they use:
``config`` (ServeConfig), ``models`` (``Models``: the named models of ``registry.Registry``, loaded
on a thread when the app starts),
``metrics`` (Prometheus) and ``health_details``. Each request's body is read on the event loop,
then parsed, validated, tokenized, run and serialised on a thread of its own
(``crossrank.scheduler.run_async``): ONNX Runtime never runs on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from crossrank.front.serve.config import ServeConfig
from crossrank.front.serve.errors import NotReady
from crossrank.front.serve.metrics import Metrics
from crossrank.front.serve.openapi import document_api
from crossrank.front.serve.protocols import error_body, path_family
from crossrank.front.serve.registry import EMBED, RERANK, Registry, ServedModel, load_registry
from crossrank.front.serve.routes import router
from crossrank.front.serve.security import Drain, Gatekeeper, KeyRing, Quotas, load_api_keys
from crossrank.version import __version__

log = logging.getLogger("crossrank.serve")


class Models:
    """The models a server holds (``registry.Registry``, by name), loaded off the event loop, and
    whether they are ready."""

    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.registry = Registry()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loaded_at: float | None = None
        self.on_failure: Callable[[], None] | None = None  # crossrank serve: stop the server

    def load(self) -> None:
        try:
            load_registry(self.config, self.registry, self.metrics.watch_model)
            self.loaded_at = time.time()
            self.ready.set()
            first_stage = self.config.first_stage_name()
            log.info("ready: %s", ", ".join(f"{s.kind} {s.name}" for s in self.registry.models.values())
                     + (f", first stage {first_stage}" if first_stage else ""))
        except BaseException as err:  # reported by /health and the serve command
            self.error = err
            log.error("loading the models failed: %s", err)
            if self.on_failure is not None:
                self.on_failure()

    def close(self) -> None:
        self.registry.close()

    def check_ready(self) -> None:
        if self.error is not None:
            raise NotReady(f"the models failed to load: {self.error}")
        if not self.ready.is_set():
            raise NotReady("the models are still loading; retry when GET /health answers 200")

    def reranker(self, name: str | None) -> ServedModel:
        """The rerank model ``name`` (a reranker or a cascade; None: the default); 404 otherwise."""
        self.check_ready()
        return self.registry.lookup(RERANK, name)

    def embedder(self, name: str | None) -> ServedModel:
        """The embedder ``name`` (None: the default); 404 otherwise."""
        self.check_ready()
        return self.registry.lookup(EMBED, name)

    def pipeline(self, name: str | None):
        """/v1/search's pipeline with the rerank model ``name`` (None: the default)."""
        self.check_ready()
        return self.registry.pipeline(name)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the models on a thread when the app starts (unless loaded already); close them at the end."""
    models = app.state.models
    if not models.ready.is_set() and models.error is None:
        threading.Thread(target=models.load, name="crossrank-load", daemon=True).start()
    yield
    models.close()


async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own answers (an unknown path: 404, a wrong method: 405) in the path's envelope."""
    return JSONResponse(error_body(path_family(request.url.path), err.status_code, str(err.detail)),
                        status_code=err.status_code, headers=getattr(err, "headers", None))


def build_app(config: ServeConfig, health_details: Callable[[], Awaitable[dict]] | None = None,
              keys: KeyRing | None = None) -> FastAPI:
    """The app of one server. Its models load on a thread when it starts, unless whoever built it
    loaded them already (``app.state.models.load()``: a Ray Serve replica does, so that it is
    ready only once they are). ``health_details``: awaited by ``GET /health`` once the models are
    ready, its keys added to the answer (a Ray replica adds its deployment's replica count).
    ``keys``: the API keys (default: ``config.api_key_file`` and CROSSRANK_API_KEYS). Every request
    passes the gate first (``security.Gatekeeper``: drain, Host, keys, Content-Type); with
    ``config.cors_origins``, CORS answers browsers from those origins."""
    app = FastAPI(title="crossrank", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if config.openapi else None)
    app.state.config = config
    app.state.metrics = Metrics()
    app.state.models = Models(config, app.state.metrics)
    app.state.health_details = health_details
    app.state.keys = load_api_keys(config.api_key_file) if keys is None else keys
    app.state.quotas = Quotas(config.key_tokens_per_second, config.key_max_concurrent, app.state.metrics)
    app.state.drain = Drain()
    app.state.metrics.in_flight.set_function(lambda: app.state.drain.in_flight)
    app.include_router(router)
    app.add_exception_handler(HTTPException, http_error)
    document_api(app)
    app.add_middleware(Gatekeeper, keys=app.state.keys, metrics=app.state.metrics, drain=app.state.drain,
                       allowed_hosts=config.allowed_hosts, protect_metrics=config.protect_metrics)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=600)
    return app


__all__ = ["Models", "build_app"]
