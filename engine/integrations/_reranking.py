"""What every framework adapter shares: one loaded Reranker per (artifact folder, options), the
options that rebuild a Reranker (for the frameworks that serialise), and ranking a list of texts.

Imports the crossrank core only, never a framework.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

from crossrank.errors import ArgumentTypeError, InvalidArgumentError, check_top_n
from crossrank.reranker import RankedDocument, Reranker
from crossrank.settings import TUNABLE

# Reranker keyword arguments an adapter accepts and serialises, with Reranker's defaults.
RERANKER_OPTIONS: dict[str, Any] = {
    "device": "cpu",
    "threads": None,
    "max_length": None,
    "batch_tokens": None,
    "long_documents": "truncate",
    "chunk_overlap": None,
    "io_binding": None,
    "backend": None,
    "precision": None,
}

_loaded: "weakref.WeakValueDictionary[tuple, Reranker]" = weakref.WeakValueDictionary()
_loading = threading.Lock()


def check_option_names(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(RERANKER_OPTIONS))
    if unknown:
        raise ArgumentTypeError(f"unknown Reranker option(s) {unknown}; accepted: {sorted(RERANKER_OPTIONS)}")


def shared_reranker(model: str | Path, **options: Any) -> Reranker:
    """The Reranker for artifact folder ``model`` with ``options``, loaded once per process.

    Adapters built with the same folder and options get the same Reranker (one ONNX session, one
    copy of the weights) for as long as one of them holds it.
    """
    check_option_names(options)
    settings = {**RERANKER_OPTIONS, **options}
    key = (str(Path(model).resolve()), tuple(sorted(settings.items())))
    with _loading:
        reranker = _loaded.get(key)
        if reranker is None:
            reranker = Reranker(model, **settings)
            _loaded[key] = reranker
        return reranker


def resolve_reranker(model: str | Path | None, reranker: Reranker | None, options: dict[str, Any]) -> Reranker:
    """``reranker`` itself, or the shared Reranker for ``model`` + ``options``: exactly one is given."""
    check_option_names(options)
    if reranker is not None:
        if model is not None:
            raise InvalidArgumentError(f"give model (an artifact folder) or reranker (a crossrank.Reranker), not both; "
                             f"got model={str(model)!r} and a Reranker for {str(reranker.path)!r}")
        if not isinstance(reranker, Reranker):
            raise ArgumentTypeError(f"reranker must be a crossrank.Reranker, got {type(reranker).__name__}")
        ignored = {k: v for k, v in options.items() if v != RERANKER_OPTIONS[k]}
        if ignored:
            raise InvalidArgumentError(f"Reranker options {ignored} would be ignored: a given reranker keeps the options "
                             f"it was loaded with; pass model= with the options instead")
        return reranker
    if model is None:
        raise InvalidArgumentError("give model= (an artifact folder from `crossrank export --kind cross`) "
                         "or reranker= (a loaded crossrank.Reranker)")
    if not isinstance(model, (str, Path)):
        raise ArgumentTypeError(f"model must be an artifact folder path (str or Path), got {type(model).__name__}")
    return shared_reranker(model, **options)


def reranker_settings(reranker: Reranker) -> dict[str, Any]:
    """``model`` plus the options that rebuild ``reranker``: what was chosen for it (window,
    long-document mode, device), and of the machine-dependent settings (threads, token budget, IO
    binding) only those given as arguments, so a pipeline saved here uses the next machine's own
    defaults or runtime.json there."""
    options = reranker.options
    return {
        "model": str(reranker.path),
        "device": reranker.device,
        "max_length": reranker.max_length,
        "long_documents": reranker.long_documents,
        "chunk_overlap": reranker.chunk_overlap,
        **{key: getattr(options, key) if options.origin[key] == "argument" else None
           for key in TUNABLE if key in RERANKER_OPTIONS},
    }


def checked_top_n(top_n: int | None, name: str = "top_n") -> int | None:
    try:
        check_top_n(top_n, name)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"{name} must be a positive int or None (keep every document), got {top_n!r}") from None
    return top_n


def text_or_empty(text: str | None) -> str:
    """A document's text; a document without text (None) is scored as the empty string."""
    return "" if text is None else text


def rank_texts(reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None) -> list[RankedDocument]:
    """``Reranker.rerank`` (best first, ties in input order, ``RankedDocument.index`` = position in ``texts``);
    no texts give no result, whatever the query."""
    checked_top_n(top_n)
    if not texts:
        return []
    return list(reranker.rerank(query, list(texts), top_n=top_n, return_documents=False))
