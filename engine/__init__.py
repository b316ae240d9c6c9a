"""crossrank: fast, faithful cross-encoder reranking on ONNX Runtime.

    import crossrank
    rr = crossrank.Reranker("artifacts/reranker-int8")
    rr.rerank(query, documents, top_n=10)   # -> Ranking [RankedDocument(index, score, document), ...]

This package is the runtime core: it imports onnxruntime, tokenizers, numpy and usearch, never
torch, the export step (``crossrank.export``) or the front wing (``crossrank.front``: CLI, demo,
bench, tune; ``crossrank.integrations``: RAG framework adapters).
"""

from crossrank.artifact import Artifact, load_artifact
from crossrank.calibration import Calibration, CalibrationError
from crossrank.cascade import Cascade
from crossrank.embedder import Embedder, Embeddings
from crossrank.errors import (ArgumentTypeError, ArtifactError, CrossrankError, DatasetNotFound,
                              DeviceUnavailableError, EmbedderMismatchError, FidelityError, IndexFormatError,
                              InvalidArgumentError, MissingExtraError, MissingFileError, NotOwnedError,
                              OutputExistsError, OverloadedError, RuntimeConfigError, StoreError, TokenBudgetError,
                              UnknownIdError, UsageError)
from crossrank.index import Hits, Index, Neighbors
from crossrank.model import Model
from crossrank.pipeline import Hit, Pipeline, SearchHit, SearchResult
from crossrank.reranker import Evidence, Ranked, RankedDocument, RankedList, Ranking, Reranker, Window
from crossrank.retriever import Candidates, Hybrid, Retriever
from crossrank.runner import CoreBudget, RunTotals
from crossrank.settings import SessionOptions
from crossrank.version import __version__

__all__ = [
    "ArgumentTypeError", "Artifact", "ArtifactError", "Calibration", "CalibrationError", "Candidates", "Cascade",
    "CoreBudget", "CrossrankError", "DatasetNotFound", "DeviceUnavailableError", "Embedder", "EmbedderMismatchError",
    "Embeddings", "Evidence", "FidelityError", "Hybrid", "Index", "IndexFormatError", "InvalidArgumentError",
    "MissingExtraError", "MissingFileError", "Model", "Neighbors", "NotOwnedError", "OutputExistsError",
    "OverloadedError", "Pipeline", "RankedDocument", "Ranking", "Reranker", "Retriever", "RunTotals",
    "RuntimeConfigError", "SearchHit", "SearchResult", "SessionOptions", "StoreError", "TokenBudgetError",
    "UnknownIdError", "UsageError", "Window", "load_artifact", "__version__",
    # the result types' earlier names, kept as aliases: Ranked = RankedDocument, RankedList = Ranking,
    # Hits = Neighbors (Index.search), Hit = SearchHit
    "Hit", "Hits", "Ranked", "RankedList",
]
