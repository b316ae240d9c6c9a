"""The FastAPI app: one process, one copy of each model, one shared scheduler per model.

``build_app(config)`` makes the app: the routes (``crossrank.front.serve.routes``, module-level
functions you can import and test alone), and on ``app.state`` the server's parts they use:
``config`` (ServeConfig), ``models`` (``Models``: loaded on a thread when the app starts),
``metrics`` (Prometheus) and ``health_details``. Each request's body is read on the event loop,
then parsed, validated, tokenized, run and serialised on a thread of its own
(``crossrank.scheduler.run_async``): ONNX Runtime never runs on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI

from crossrank.embedder import Embedder
from crossrank.front.serve.config import MODEL_FLAGS, ServeConfig
from crossrank.front.serve.errors import NotConfigured, NotReady
from crossrank.front.serve.metrics import Metrics
from crossrank.front.serve.routes import router
from crossrank.index import Index
from crossrank.pipeline import Pipeline
from crossrank.reranker import Reranker
from crossrank.version import __version__

log = logging.getLogger("crossrank.serve")

WARMUP_QUERY = "warm up"


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
        """The loaded reranker, embedder or pipeline; NotReady / NotConfigured otherwise."""
        self.check_ready()
        model = getattr(self, what)
        if model is None:
            part = "index" if what == "pipeline" else what
            raise NotConfigured(f"this server has no {part}: start crossrank serve with {MODEL_FLAGS[part]}")
        return model

    def model_info(self, what: str) -> dict | None:
        """/info's entry for the reranker or embedder (None when the server has none)."""
        model = getattr(self, what)
        path = getattr(self.config, what)
        if path is None:
            return None
        info: dict[str, Any] = {"id": Path(path).name, "path": str(path), "loaded": model is not None}
        if model is not None:
            described = model.describe()
            m = described["manifest"]
            info.update(kind=m["kind"], precision=m["precision"], max_length=described["max_length"],
                        source=m["source"], int8_recipe=m["int8_recipe"],
                        settings={**described["options"], "origin": described["origin"]}, **described["sharing"])
            if what == "embedder":
                info["dim"] = m["dim"]
        return info


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the models on a thread when the app starts (unless loaded already); close them at the end."""
    models = app.state.models
    if not models.ready.is_set() and models.error is None:
        threading.Thread(target=models.load, name="crossrank-load", daemon=True).start()
    yield
    models.close()


def build_app(config: ServeConfig, health_details: Callable[[], Awaitable[dict]] | None = None) -> FastAPI:
    """The app of one server. Its models load on a thread when it starts, unless whoever built it
    loaded them already (``app.state.models.load()``: a Ray Serve replica does, so that it is
    ready only once they are). ``health_details``: awaited by ``GET /health`` once the models are
    ready, its keys added to the answer (a Ray replica adds its deployment's replica count)."""
    app = FastAPI(title="crossrank", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.config = config
    app.state.metrics = Metrics()
    app.state.models = Models(config, app.state.metrics)
    app.state.health_details = health_details
    app.include_router(router)
    return app


__all__ = ["Models", "build_app"]
