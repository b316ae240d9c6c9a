"""crossrank: fast, faithful cross-encoder reranking on ONNX Runtime.

    import crossrank
    rr = crossrank.Reranker("artifacts/reranker-int8")
    rr.rerank(query, documents, top_n=10)   # -> [Ranked(index, score, document), ...]
"""

from crossrank.artifact import Artifact, ArtifactError, load_artifact
from crossrank.embedder import Embedder
from crossrank.index import EmbedderMismatchError, Hits, Index, IndexFormatError
from crossrank.pipeline import Hit, Pipeline, SearchResult
from crossrank.reranker import Ranked, Reranker

__version__ = "0.1.0"

__all__ = [
    "Artifact", "ArtifactError", "Embedder", "EmbedderMismatchError", "Hit", "Hits", "Index",
    "IndexFormatError", "Pipeline", "Ranked", "Reranker", "SearchResult", "load_artifact", "__version__",
]
