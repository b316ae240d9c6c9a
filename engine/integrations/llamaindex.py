"""LlamaIndex: crossrank as a ``BaseNodePostprocessor`` (extra ``crossrank[llamaindex]``).

    from crossrank.integrations.llamaindex import CrossrankRerank

    rerank = CrossrankRerank(model="artifacts/reranker-int8", top_n=5)
    engine = index.as_query_engine(similarity_top_k=50, node_postprocessors=[rerank])
    rerank.postprocess_nodes(nodes, query_str="knowledge graph embeddings")   # or on its own

The text scored is ``node.get_content(metadata_mode)`` (default ``MetadataMode.NONE``: the
node's text only; ``"embed"`` adds the metadata the node shows its embedding model). Results are
new ``NodeWithScore`` objects around the same nodes with ``score`` set to crossrank's score; the
given ``NodeWithScore`` objects (and their retrieval scores) are left as they were.
``to_dict`` / ``from_dict`` (and ``to_json`` / ``from_json``) round-trip: the dict names the
artifact folder and options, and ``from_dict`` loads (or reuses) the same Reranker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Union

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from crossrank.integrations._reranking import (
    checked_top_n, rank_texts, reranker_settings, resolve_reranker, text_or_empty,
)
from crossrank.errors import InvalidArgumentError
from crossrank.reranker import Reranker


class CrossrankRerank(BaseNodePostprocessor):
    """Reranks LlamaIndex nodes with a crossrank cross-encoder; scores go to ``NodeWithScore.score``.

    model: artifact folder from ``crossrank export --kind cross`` (loaded once per process for a
    given folder and options), or reranker: a loaded ``crossrank.Reranker`` to reuse. top_n: how
    many nodes to keep, best first (None keeps all; default 2, as LlamaIndex's rerankers).
    device, threads, max_length, batch_tokens, long_documents ("truncate" | "chunk"),
    chunk_overlap, io_binding, backend, precision: ``crossrank.Reranker`` options, used with ``model``.
    """

    model: str = Field(description="crossrank artifact folder (crossrank export --kind cross).")
    top_n: Optional[int] = Field(default=2, description="Nodes kept, best first; None keeps all.")
    metadata_mode: MetadataMode = Field(default=MetadataMode.NONE, description="What get_content includes.")
    device: str = "cpu"
    threads: Optional[int] = None
    max_length: Optional[int] = None
    batch_tokens: Optional[int] = None
    long_documents: str = "truncate"
    chunk_overlap: Optional[int] = None
    io_binding: Optional[bool] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    _reranker: Reranker = PrivateAttr()

    def __init__(self, model: Union[str, Path, None] = None, *, reranker: Reranker | None = None,
                 top_n: int | None = 2, metadata_mode: MetadataMode | str = MetadataMode.NONE, **options: Any):
        callback_manager = options.pop("callback_manager", None)
        checked_top_n(top_n)
        loaded = resolve_reranker(model, reranker, options)
        # The fields describe the Reranker actually used, so to_dict / from_dict rebuild the same one.
        settings = reranker_settings(loaded) if reranker is not None else {**options, "model": str(model)}
        extra = {} if callback_manager is None else {"callback_manager": callback_manager}
        super().__init__(top_n=top_n, metadata_mode=MetadataMode(metadata_mode), **settings, **extra)
        self._reranker = loaded

    @classmethod
    def class_name(cls) -> str:
        return "CrossrankRerank"

    @property
    def reranker(self) -> Reranker:
        """The crossrank.Reranker this postprocessor scores with."""
        return self._reranker

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise InvalidArgumentError("CrossrankRerank needs the query: pass query_bundle= or query_str= "
                             "to postprocess_nodes (a query engine does this itself)")
        texts = [text_or_empty(n.node.get_content(metadata_mode=self.metadata_mode)) for n in nodes]
        payload = {EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model,
                   EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n}
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            ranked = rank_texts(self._reranker, query_bundle.query_str, texts, self.top_n)
            reranked = [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in ranked]
            event.on_end(payload={EventPayload.NODES: reranked})
        return reranked


__all__ = ["CrossrankRerank"]
