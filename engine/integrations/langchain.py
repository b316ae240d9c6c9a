"""LangChain: crossrank as a ``BaseDocumentCompressor`` (extra ``crossrank[langchain]``).

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from crossrank.integrations.langchain import CrossrankRerank

    compressor = CrossrankRerank(model="artifacts/reranker-int8", top_n=5)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=first_stage)
    retriever.invoke("knowledge graph embeddings")   # Documents, best first, metadata["relevance_score"]

The text scored is ``Document.page_content``. Returned documents are copies of the given ones
(same ``id``, ``page_content`` and other metadata) with ``metadata["relevance_score"]`` (float)
added; the caller's documents and their metadata dicts are left as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import run_in_executor
from pydantic import ConfigDict, PrivateAttr

from crossrank.integrations._reranking import (
    checked_top_n, rank_texts, reranker_settings, resolve_reranker, text_or_empty,
)
from crossrank.reranker import Reranker

SCORE_KEY = "relevance_score"


class CrossrankRerank(BaseDocumentCompressor):
    """Reranks LangChain Documents by ``Document.page_content`` with a crossrank cross-encoder.

    model: artifact folder from ``crossrank export --kind cross`` (loaded once per process for a
    given folder and options), or reranker: a loaded ``crossrank.Reranker`` to reuse. top_n: how
    many documents to keep, best first (None keeps all; default 3, as LangChain's rerankers).
    device, threads, max_length, batch_tokens, long_documents ("truncate" | "chunk"),
    chunk_overlap, io_binding, backend, precision: ``crossrank.Reranker`` options, used with ``model``.
    """

    model: Optional[str] = None
    top_n: Optional[int] = 3
    device: str = "cpu"
    threads: Optional[int] = None
    max_length: Optional[int] = None
    batch_tokens: Optional[int] = None
    long_documents: str = "truncate"
    chunk_overlap: Optional[int] = None
    io_binding: Optional[bool] = None
    backend: Optional[str] = None
    precision: Optional[str] = None

    model_config = ConfigDict(extra="forbid")
    _reranker: Reranker = PrivateAttr()

    def __init__(self, model: Union[str, Path, None] = None, *, reranker: Reranker | None = None,
                 top_n: int | None = 3, **options: Any):
        checked_top_n(top_n)
        loaded = resolve_reranker(model, reranker, options)
        # The fields describe the Reranker actually used, so a copy or a dump rebuilds the same one.
        settings = reranker_settings(loaded) if reranker is not None else {**options, "model": str(model)}
        super().__init__(top_n=top_n, **settings)
        self._reranker = loaded

    @property
    def reranker(self) -> Reranker:
        """The crossrank.Reranker this compressor scores with."""
        return self._reranker

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The ``top_n`` best documents for ``query``, best first, each a copy carrying
        ``metadata["relevance_score"]``. No documents give an empty list."""
        documents = list(documents)
        ranked = rank_texts(self._reranker, query, [text_or_empty(d.page_content) for d in documents], self.top_n)
        return [documents[r.index].model_copy(update={"metadata": {**documents[r.index].metadata, SCORE_KEY: r.score}})
                for r in ranked]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """``compress_documents`` on a worker thread (scoring blocks: the event loop stays free)."""
        return await run_in_executor(None, self.compress_documents, documents, query, callbacks)

__all__ = ["CrossrankRerank", "SCORE_KEY"]
