"""crossrank: fast, faithful cross-encoder reranking on ONNX Runtime.

    import crossrank
    rr = crossrank.Reranker("artifacts/reranker-int8")
    rr.rerank(query, documents, top_n=10)   # -> [Ranked(index, score, document), ...]

This package is the runtime core: it imports onnxruntime, tokenizers, numpy and usearch, never
torch, the export step (``crossrank.export``) or the front wing (``crossrank.front``: CLI, demo,
bench, tune; ``crossrank.integrations``: RAG framework adapters).
"""

from crossrank.artifact import Artifact, load_artifact
from crossrank.embedder import Embedder
from crossrank.errors import (ArgumentTypeError, ArtifactError, CrossrankError, DatasetNotFound,
                              DeviceUnavailableError, EmbedderMismatchError, IndexFormatError, InvalidArgumentError,
                              MissingFileError, NotOwnedError, OutputExistsError, OverloadedError, RuntimeConfigError,
                              StoreError, UnknownIdError, UsageError)
from crossrank.index import Hits, Index
from crossrank.pipeline import Hit, Pipeline, SearchResult
from crossrank.reranker import Ranked, RankedList, Reranker
from crossrank.retriever import Candidates, Hybrid, Retriever
from crossrank.version import __version__

__all__ = [
    "ArgumentTypeError", "Artifact", "ArtifactError", "Candidates", "CrossrankError", "DatasetNotFound",
    "DeviceUnavailableError", "Embedder", "EmbedderMismatchError", "Hit", "Hits", "Hybrid", "Index", "IndexFormatError",
    "InvalidArgumentError", "MissingFileError", "NotOwnedError", "OutputExistsError", "OverloadedError", "Pipeline", "Ranked",
    "RankedList", "Reranker", "Retriever", "RuntimeConfigError", "SearchResult", "StoreError", "UnknownIdError", "UsageError", "load_artifact", "__version__",
]
