"""crossrank: fast, faithful cross-encoder reranking on ONNX Runtime."""

from crossrank.artifact import Artifact, ArtifactError, load_artifact

__version__ = "0.1.0"

__all__ = ["Artifact", "ArtifactError", "load_artifact", "__version__"]
