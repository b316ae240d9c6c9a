"""Haystack: crossrank as a ranker component (extra ``crossrank[haystack]``).

    from haystack import Pipeline
    from crossrank.integrations.haystack import CrossrankRanker

    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=50))
    pipe.add_component("ranker", CrossrankRanker(model="artifacts/reranker-int8", top_k=5))
    pipe.connect("retriever.documents", "ranker.documents")
    pipe.run({"retriever": {"query": q}, "ranker": {"query": q}})["ranker"]["documents"]

The text scored is ``Document.content`` (a document without content, e.g. a blob only, is
scored as the empty string and kept). Returned documents are copies (``dataclasses.replace``:
same id, content, meta, embedding) with ``score`` set to crossrank's score; the given documents
are left as they were. The model is loaded by ``warm_up`` (a Pipeline calls it before running;
``run`` calls it too if needed). ``to_dict`` / ``from_dict`` round-trip, so pipelines serialise
(``Pipeline.dumps`` / ``loads``): the dict names the artifact folder and options.
"""

# No `from __future__ import annotations`: Haystack reads run()'s annotations as types to type-check
# pipeline connections, and Haystack 2.x does not resolve string annotations.
from dataclasses import replace
from pathlib import Path
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from crossrank.integrations._reranking import (
    RERANKER_OPTIONS, check_option_names, checked_top_n, rank_texts, reranker_settings, resolve_reranker,
    text_or_empty,
)
from crossrank.reranker import Reranker


@component
class CrossrankRanker:
    """Ranks Haystack Documents by ``content`` with a crossrank cross-encoder, best first.

    model: artifact folder from ``crossrank export --kind cross`` (loaded by ``warm_up``, once
    per process for a given folder and options), or reranker: a loaded ``crossrank.Reranker``
    to reuse. top_k: documents kept (None keeps all; default 10, as Haystack's rankers), which
    ``run(top_k=...)`` overrides per call. device, threads, max_length, batch_tokens,
    long_documents ("truncate" | "chunk"), chunk_overlap, io_binding, backend, precision: ``crossrank.Reranker``
    options, used with ``model``.
    """

    def __init__(self, model: str | Path | None = None, *, reranker: Reranker | None = None,
                 top_k: int | None = 10, **options: Any):
        check_option_names(options)
        self.top_k = checked_top_n(top_k, "top_k")
        if reranker is not None:
            self._reranker: Reranker | None = resolve_reranker(model, reranker, options)
            settings = reranker_settings(reranker)
            self.model, self.options = settings.pop("model"), settings
        else:
            if not isinstance(model, (str, Path)):
                resolve_reranker(model, reranker, options)  # raises: says what to give
            self._reranker = None
            self.model, self.options = str(model), {**RERANKER_OPTIONS, **options}

    def warm_up(self) -> None:
        """Loads the model (or takes the shared one already loaded with the same folder and options)."""
        if self._reranker is None:
            self._reranker = resolve_reranker(self.model, None, self.options)

    @property
    def reranker(self) -> Reranker:
        """The crossrank.Reranker this component scores with (loads it if needed)."""
        self.warm_up()
        return self._reranker

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        """The ``top_k`` best documents for ``query`` (``top_k`` here overrides the component's),
        best first, each a copy with ``score`` set. No documents give ``{"documents": []}``."""
        top_k = self.top_k if top_k is None else checked_top_n(top_k, "top_k")
        ranked = rank_texts(self.reranker, query, [text_or_empty(d.content) for d in documents], top_k)
        return {"documents": [replace(documents[r.index], score=r.score) for r in ranked]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, model=self.model, top_k=self.top_k, **self.options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossrankRanker":
        return default_from_dict(cls, data)


__all__ = ["CrossrankRanker"]
