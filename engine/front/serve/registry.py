"""The models one server holds, by name: the request's ``model`` field picks one.

``Registry`` maps names to ``ServedModel``s of two families: rerank models (rerankers and
cascades of them: ``/v1/rerank``, ``/v2/rerank``, ``/rerank``, ``/v1/search``) and embedders
(``/v1/embeddings``, ``/embeddings``, ``/embed``). A request without ``model`` gets its family's
default (the first one given); a name the server does not hold is ``UnknownModel``, a 404 in the
endpoint's error envelope naming the models it does hold. ``load_registry`` builds every model of
a ``ServeConfig`` (warmed with one small call each) and records the resident memory each one's
loading added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from crossrank.cascade import Cascade
from crossrank.embedder import Embedder
from crossrank.front.measure import rss_mb
from crossrank.front.serve.config import MODEL_FLAGS, ServeConfig, parse_cascade
from crossrank.front.serve.errors import BadRequest, NotConfigured, UnknownModel
from crossrank.pipeline import Pipeline
from crossrank.reranker import Reranker
from crossrank.retriever import Retriever
from crossrank.runner import CoreBudget
from crossrank.settings import ServeLayout, physical_cores

log = logging.getLogger("crossrank.serve")

WARMUP_QUERY = "warm up"
RERANK, EMBED = "rerank", "embed"   # the two families of endpoints, each with its own models


@dataclass
class ServedModel:
    """One named model: a Reranker, a Cascade (of served rerankers) or an Embedder."""

    name: str
    kind: str                       # "reranker", "cascade" or "embedder"
    model: Any
    source: str                     # the artifact folder, or the cascade's spec
    memory_bytes: int | None = None  # resident memory its loading (and warm-up call) added
    stages: list = field(default_factory=list)  # a cascade's (reranker name, depth) stages
    layout: ServeLayout | None = None  # workers x threads and where they came from (None: sharing off)

    @property
    def family(self) -> str:
        return EMBED if self.kind == "embedder" else RERANK

    def describe(self, paths: bool = True) -> dict[str, Any]:
        """/info's entry: name, kind, source, memory, and what the model says of itself (``paths``
        False: folders by their names only)."""
        info: dict[str, Any] = {"kind": self.kind, "memory_mb": None if self.memory_bytes is None
                                else round(self.memory_bytes / 1e6, 1)}
        if self.kind == "cascade":
            info["spec"] = self.source
            info["stages"] = [{"model": name, "depth": depth} for name, depth in self.stages]
            return info
        described = self.model.describe()
        m = described["manifest"]
        if paths:
            info["path"] = self.source
        info.update(precision=m["precision"], max_length=described["max_length"],
                    source=m["source"] if paths else Path(m["source"]).name, int8_recipe=m["int8_recipe"], sha256=m["sha256"],
                    settings={**described["options"], "origin": described["origin"]}, **described["sharing"],
                    layout=None if self.layout is None else {"workers": self.layout.workers,
                                                             "threads": self.layout.threads,
                                                             "origin": self.layout.origin})
        if self.kind == "embedder":
            info["dim"] = m["dim"]
        else:
            info.update(scores=described["scores"], calibration=described["calibration"],
                        long_documents=described["long_documents"], family=described["family"],
                        instruction=described["instruction"])
        return info


@dataclass
class Registry:
    """Served models by name, in the order given (the first of each family is its default)."""

    models: dict[str, ServedModel] = field(default_factory=dict)
    retriever: Retriever | None = None   # /v1/search's first stage: an Index, a store, or Hybrid
    _pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def add(self, served: ServedModel) -> None:
        self.models[served.name] = served

    def names(self, family: str) -> list[str]:
        return [name for name, served in self.models.items() if served.family == family]

    def default(self, family: str) -> str | None:
        names = self.names(family)
        return names[0] if names else None

    def lookup(self, family: str, name: str | None) -> ServedModel:
        """The model ``name`` of ``family`` (None: the family's default). NotConfigured when the
        server holds none of that family, UnknownModel (404, listing them) for another name."""
        names = self.names(family)
        if not names:
            flag = MODEL_FLAGS["embedder" if family == EMBED else "reranker"]
            raise NotConfigured(f"this server has no {'embedder' if family == EMBED else 'reranker'}: start crossrank "
                                f"serve with {flag}")
        if name is None:
            return self.models[names[0]]
        served = self.models.get(name)
        if served is None or served.family != family:
            what = "embedding" if family == EMBED else "rerank"
            raise UnknownModel(f"model {name!r:.80} is not served here; {what} models: {', '.join(names)} (default "
                               f"{names[0]}; GET /v1/models lists every model)", "model")
        return served

    def pipeline(self, name: str | None) -> Pipeline:
        """The two-stage pipeline of /v1/search: the default embedder and the first stage, then the
        rerank model ``name`` (a reranker, or a cascade's stages); a server without rerankers
        answers with the first stage alone."""
        if self.retriever is None:
            raise NotConfigured("this server has no index: start crossrank serve with --index DIR or --store URL")
        embedder = self.models[self.default(EMBED)].model
        if name is None and not self.names(RERANK):
            if "" not in self._pipelines:
                self._pipelines[""] = Pipeline(embedder, self.retriever)
            return self._pipelines[""]
        served = self.lookup(RERANK, name)
        if served.name not in self._pipelines:
            model = served.model
            if isinstance(model, Cascade):
                pipeline = Pipeline(embedder, self.retriever, rerankers=model.rerankers, depths=model.depths)
            else:
                pipeline = Pipeline(embedder, self.retriever, model)
            self._pipelines[served.name] = pipeline
        return self._pipelines[served.name]

    def check_documents(self, served: ServedModel, count: int) -> None:
        """A cascade whose first stage has a depth reranks at most that many documents per request."""
        if served.kind == "cascade" and served.model.depths[0] is not None and count > served.model.depths[0]:
            raise BadRequest(f"model {served.name!r} is the cascade {served.source}: its first stage reranks at most "
                             f"{served.model.depths[0]} documents, this request has {count}; send at most "
                             f"{served.model.depths[0]} or use a reranker", param="documents")

    def close(self) -> None:
        for served in self.models.values():
            if served.kind != "cascade":
                served.model.close()


def _measured(build: Callable[[], Any]) -> tuple[Any, int | None]:
    """What ``build()`` returns, and the resident memory it added (bytes; None where unknown)."""
    try:
        before = rss_mb()
    except OSError:  # no /proc: not Linux
        return build(), None
    model = build()
    return model, int((rss_mb() - before) * 1e6)


def core_budget(config: ServeConfig, layouts: list[ServeLayout | None] = ()) -> CoreBudget | None:
    """The models' shared budget of model calls ("shared": as many at once as there are cores for
    the most intra-op threads a call of theirs uses, at least one), or None ("per-model")."""
    if config.core_sharing != "shared":
        return None
    cores = physical_cores()
    threads = max([layout.threads for layout in layouts if layout is not None] or [config.threads or cores])
    return CoreBudget(max(1, cores // threads))


def load_registry(config: ServeConfig, registry: Registry, on_model: Callable[[ServedModel], None]) -> None:
    """Build, warm and add every model of ``config`` to ``registry``, one at a time (so the memory
    each adds is its own), each with its layout (``ServeConfig.layout``); ``on_model`` sees each
    one added (e.g. metrics)."""
    models = [(kind, name, path, config.layout(path)) for kind in ("reranker", "embedder")
              for name, path in getattr(config, kind).items()]
    budget = core_budget(config, [layout for *_, layout in models])

    def build(kind: str, path: str, layout: ServeLayout | None):
        options = {"threads": config.threads} if layout is None else \
            {"threads": layout.threads, "shared": True, "max_queue_tokens": config.max_queue_tokens,
             "workers": layout.workers}
        if kind == "reranker":
            model = Reranker(path, device=config.device, core_budget=budget, **options)
            model.rerank(WARMUP_QUERY, [WARMUP_QUERY])
        else:
            model = Embedder(path, device=config.device, core_budget=budget, **options)
            model.embed([WARMUP_QUERY])
        return model

    for kind, name, path, layout in models:
        model, memory = _measured(lambda: build(kind, path, layout))
        registry.add(ServedModel(name, kind, model, path, memory, layout=layout))
        on_model(registry.models[name])
        log.info("loaded %s %s from %s (%s MB resident); %s", kind, name, path,
                 "?" if memory is None else f"{memory / 1e6:.0f}",
                 "sharing off" if layout is None else f"layout {layout.text()}")
    for name, spec in config.cascade.items():
        stages = parse_cascade(name, spec, config.reranker)
        cascade = Cascade([registry.models[stage].model for stage, _ in stages], [depth for _, depth in stages])
        registry.add(ServedModel(name, "cascade", cascade, spec, stages=stages))
        on_model(registry.models[name])
    if config.index or config.store:
        from crossrank.stores import DEFAULT_TABLE, open_retriever

        registry.retriever = open_retriever(config.store or config.index, table=config.table or DEFAULT_TABLE,
                                            embedder=registry.models[registry.default(EMBED)].model,
                                            hybrid=config.hybrid)


__all__ = ["EMBED", "RERANK", "Registry", "ServedModel", "UnknownModel", "core_budget", "load_registry"]
