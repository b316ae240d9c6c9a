"""rerankers (AnswerDotAI): crossrank as a ``BaseRanker`` (extra ``crossrank[rerankers]``).

    from crossrank.integrations.rerankers import CrossrankRanker

    ranker = CrossrankRanker("artifacts/reranker-int8")           # instead of rerankers.Reranker(...)
    results = ranker.rank("knowledge graph embeddings", docs, doc_ids=ids)   # -> RankedResults
    results.top_k(5)                                              # [Result(document, score, rank), ...]
    ranker.score(query, doc)                                      # -> float

``rerankers.Reranker(name, model_type=...)`` picks among rerankers' own classes only (a fixed
table), so crossrank is built directly; everything downstream (``RankedResults``, ``top_k``,
``get_score_by_docid``, ``rank_async``) is rerankers' own. Mapping: one ``Result`` per document,
best first, ``score`` = crossrank's score, ``rank`` = 1-based position, ``has_scores=True``;
``document`` is a ``rerankers.Document`` with the text, ``doc_id`` (given ids, the document's
own, or its position) and metadata. Given ``Document`` objects are not modified: new ones are
made when ``doc_ids`` / ``metadata`` override theirs. Text documents only.

Note: importing rerankers imports torch and transformers when they are installed (its model
table does), which takes seconds; crossrank itself never needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Union

from rerankers.documents import Document
from rerankers.models.ranker import BaseRanker
from rerankers.results import RankedResults, Result

from crossrank.integrations._reranking import rank_texts, resolve_reranker
from crossrank.errors import ArgumentTypeError, InvalidArgumentError
from crossrank.reranker import Reranker


def as_documents(docs: Union[str, List[str], Document, List[Document]],
                 doc_ids: Optional[Union[List[str], List[int]]] = None,
                 metadata: Optional[List[dict]] = None) -> list[Document]:
    """rerankers' accepted inputs as a list of text Documents (new objects where ids or metadata
    are overridden; ``doc_id`` defaults to the document's own, else its position)."""
    if isinstance(docs, (str, Document)):
        docs = [docs]
    docs = list(docs)
    for name, values in (("doc_ids", doc_ids), ("metadata", metadata)):
        if values is not None and len(values) != len(docs):
            raise InvalidArgumentError(f"{name} has {len(values)} entries for {len(docs)} documents")
    result = []
    for i, doc in enumerate(docs):
        given_id = doc_ids[i] if doc_ids is not None else None
        given_meta = metadata[i] if metadata is not None else None
        if isinstance(doc, str):
            doc = Document(doc, doc_id=i if given_id is None else given_id, metadata=given_meta)
        elif not isinstance(doc, Document):
            raise ArgumentTypeError(f"docs[{i}] must be a str or rerankers.Document, got {type(doc).__name__}")
        elif doc.document_type != "text":
            raise InvalidArgumentError(f"docs[{i}] is a {doc.document_type!r} document; crossrank ranks text documents only")
        elif given_id is not None or given_meta is not None or doc.doc_id is None:
            doc_id = given_id if given_id is not None else i if doc.doc_id is None else doc.doc_id
            doc = Document(doc.text, doc_id=doc_id, metadata=doc.metadata if given_meta is None else given_meta)
        result.append(doc)
    return result


class CrossrankRanker(BaseRanker):
    """A rerankers ``BaseRanker`` scoring with a crossrank cross-encoder.

    model_name_or_path: artifact folder from ``crossrank export --kind cross`` (loaded once per
    process for a given folder and options), or reranker: a loaded ``crossrank.Reranker`` to
    reuse. options: ``crossrank.Reranker`` options (device, threads, max_length, batch_tokens,
    long_documents, chunk_overlap, io_binding, backend, precision), used with the folder.
    """

    def __init__(self, model_name_or_path: Union[str, Path, None] = None, verbose: int = 0, *,
                 reranker: Reranker | None = None, **options: Any):
        self.verbose = verbose
        self.reranker = resolve_reranker(model_name_or_path, reranker, options)
        self.ranking_type = "pointwise"

    def rank(self, query: str, docs: Union[str, List[str], Document, List[Document]],
             doc_ids: Optional[Union[List[str], List[int]]] = None,
             metadata: Optional[List[dict]] = None) -> RankedResults:
        """Every document ranked for ``query``, best first (``results.top_k(k)`` keeps the best k)."""
        documents = as_documents(docs, doc_ids, metadata)
        ranked = rank_texts(self.reranker, query, [d.text for d in documents], None)
        results = [Result(document=documents[r.index], score=r.score, rank=position)
                   for position, r in enumerate(ranked, start=1)]
        return RankedResults(results=results, query=query, has_scores=True)

    def score(self, query: str, doc: str) -> float:
        """crossrank's score of one (query, document) pair."""
        return float(self.reranker.score([(query, doc)])[0])


__all__ = ["CrossrankRanker", "as_documents"]
