"""The model names a server answers to: what ``GET /v1/models`` lists and what a request's
``model`` field must name (else 404 naming them). One artifact per kind today, named by its folder;
a server with several models per kind replaces ``served_names`` with its registry's lookup.
"""

from __future__ import annotations

from pathlib import Path

from crossrank.front.serve.errors import UnknownModel


def served_names(config, kind: str) -> list[str]:
    """The names of the ``kind`` ("reranker" or "embedder") models ``config`` serves."""
    path = getattr(config, kind)
    return [Path(path).name] if path else []


def check_model(config, kind: str, requested: str | None) -> None:
    """UnknownModel (404, naming the served ones) when a request names a model not served as ``kind``;
    a request without a name is served by the one model."""
    if requested is None:
        return
    names = served_names(config, kind)
    if requested not in names:
        served = ", ".join(repr(name) for name in names) or "none"
        raise UnknownModel(f"model {requested!r:.80} is not served here; this server's {kind} models: {served} "
                           f"(GET /v1/models lists them)", "model")


__all__ = ["check_model", "served_names"]
