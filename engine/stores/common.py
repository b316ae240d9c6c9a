"""What the stores share: masking credentials in anything shown, the record a store keeps about
the embedder that built it, checking documents before a load, and embedding them in batches with a
progress bar."""

from __future__ import annotations

import re
from typing import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from crossrank.errors import EmbedderMismatchError, InvalidArgumentError, UsageError, check_ids, check_int, check_texts
from crossrank.index import embedder_identity
from crossrank.progress import progress_bar
from crossrank.version import __version__

RECORD_KIND = "crossrank-store"
RECORD_FORMAT = 1
DEFAULT_TABLE = "crossrank_documents"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


def mask_credentials(text: str) -> str:
    """``text`` with every password in it replaced by ``***``: URL userinfo
    (``scheme://user:secret@host``), ``password=...`` in key=value connection strings and URL
    query strings, and Milvus ``token=...``."""
    text = re.sub(r"(://[^/@\s:]*:)[^@\s/]*@", r"\1***@", str(text))
    return re.sub(r"(?i)\b(password|token)=('[^']*'|[^\s&]+)", r"\1=***", text)


def mask_url(url: str) -> str:
    """A connection URL fit for logs and errors: the password masked, and the user's name kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_credentials(url)
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if _port(parts) else "")
        parts = parts._replace(netloc=netloc)
    return mask_credentials(urlunsplit(parts))


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def check_name(name: str, what: str = "table") -> str:
    """A table or collection name crossrank may create: letters, digits and _, at most 48."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidArgumentError(f"{what} name {name!r:.60} is not accepted: use letters, digits and _ "
                                   f"(starting with a letter or _), at most 48 characters")
    return name


def store_record(embedder, dim: int, **settings) -> dict:
    """What a store keeps about itself: that crossrank made it, the embedder (model.onnx sha256,
    dim, path), and its settings."""
    info = embedder_identity(embedder) if embedder is not None else {}
    return {"kind": RECORD_KIND, "format": RECORD_FORMAT, "dim": int(dim), "embedder": info,
            "crossrank_version": __version__, **settings}


def check_store_embedder(record: dict, embedder, where: str) -> None:
    """EmbedderMismatchError unless ``embedder`` is the artifact whose sha256 the store recorded."""
    from crossrank.index import check_embedder

    if embedder is not None and record.get("embedder"):
        check_embedder({"dim": record["dim"], "embedder": record["embedder"]}, embedder, where)
    elif embedder is not None and int(embedder.dim) != int(record["dim"]):
        raise EmbedderMismatchError(f"{where} holds {record['dim']}-dim vectors, the embedder at "
                                    f"{embedder.artifact.path} makes {embedder.dim}-dim ones")


def check_documents(documents, ids, metadata=None, vectors=None, dim: int | None = None
                    ) -> tuple[list[str], list[str], list | None, np.ndarray | None]:
    """Texts, ids (as str: stores key documents by text), metadata (dicts or None) and vectors,
    checked to agree in length; an id given twice is refused (nothing is written)."""
    texts = check_texts(documents)
    if ids is None:
        raise InvalidArgumentError("a store needs ids= (one str or int per document): it keeps no counter")
    ids = [str(i) for i in check_ids(ids)]
    if len(ids) != len(texts):
        raise InvalidArgumentError(f"{len(ids)} ids for {len(texts)} documents")
    seen: set = set()
    for value in ids:
        if value in seen:
            raise InvalidArgumentError(f"id {value!r} appears twice in ids (ids must be unique)")
        seen.add(value)
    if metadata is not None:
        if len(metadata) != len(texts) or not all(m is None or isinstance(m, dict) for m in metadata):
            raise InvalidArgumentError(f"metadata must be one dict (or None) per document: {len(texts)} documents")
    if vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), dim):
            raise InvalidArgumentError(f"vectors have shape {vectors.shape}; expected ({len(texts)}, {dim})")
        if not np.isfinite(vectors).all():
            raise InvalidArgumentError("vectors have nan or inf values: a vector must be finite")
    return texts, ids, metadata, vectors


def embedded_batches(embedder, texts: Sequence[str], vectors: np.ndarray | None, batch_size: int,
                     progress: bool, desc: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, float32 vectors) batch by batch, shortest texts first (little padding); the given
    ``vectors`` instead of embedding when there are any. A progress bar counts documents."""
    check_int(batch_size, "batch_size")
    if vectors is None and embedder is None:
        raise UsageError("no embedder to embed the documents: pass embedder= (or vectors=)")
    order = np.argsort([len(t) for t in texts], kind="stable")
    with progress_bar(total=len(texts), unit="doc", desc=desc, disable=not progress, smoothing=0.1) as bar:
        for start in range(0, len(order), batch_size):
            part = order[start: start + batch_size]
            if vectors is not None:
                batch = vectors[part]
            else:
                batch = np.asarray(embedder.embed([texts[i] for i in part]), dtype=np.float32)
            yield part, batch
            bar.update(len(part))


__all__ = ["DEFAULT_TABLE", "RECORD_KIND", "check_documents", "check_name", "check_store_embedder",
           "embedded_batches", "mask_credentials", "mask_url", "store_record"]
