"""The first stage: an HNSW vector index (usearch) plus a document store, tied to its embedder.

``Index.build(embedder, documents)`` embeds and indexes; ``search`` returns ids and similarities
(1 - cosine distance); ``save`` is atomic and ``Index.load(path, view=True)`` memory-maps the
vectors (layout and atomicity: crossrank.index_files; why SQLite for documents:
crossrank.docstore). The saved manifest records the embedder artifact (model.onnx sha256 and
dim): loading with another embedder raises EmbedderMismatchError instead of returning garbage.

Keys are usearch's unsigned 64-bit keys, handed out in order and never reused. User ids are
``str`` or ``int`` (default: the document's key, counting on from the last one added).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

import crossrank.session  # noqa: F401  onnxruntime must be loaded before usearch (see crossrank.session)
import usearch  # noqa: I001
from usearch import index as usearch_index

from crossrank.artifact import sha256_file
from crossrank.docstore import DocumentStore, chunks
from crossrank.errors import (EmbedderMismatchError, IndexFormatError, InvalidArgumentError, MissingFileError,
                              OutputExistsError, UsageError, check_choice, check_id, check_ids, check_int, check_queries, check_query,
                              check_texts)
from crossrank.index_files import (DOCUMENTS, DTYPES, FORMAT_VERSION, KIND, MANIFEST, METRICS, MIN_CONNECTIVITY, POINTER,
                                   VECTORS, commit_generation, fsync_dir, fsync_file, new_staging_folder,
                                   read_manifest)
from crossrank.locks import ReadWriteLock
from crossrank.retriever import Candidates, RetrieverBase
from crossrank.version import __version__

# HNSW defaults, chosen on Semanlink (7,245 MiniLM vectors, f16): recall@10 0.999 and recall@100
# 0.997 against exact search, ~1,500 queries/s on one core. usearch's own (16, 128, 64) give
# 0.980 / 0.950. See benchmarks/index_figures.py.
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 256
DEFAULT_EXPANSION_SEARCH = 256


def _made_by_save(name: str) -> bool:
    return name.startswith(("gen-", ".tmp-", f".{POINTER}."))


def _check_finite(vectors: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1)) if vectors.size else []
    if len(bad):
        raise InvalidArgumentError(f"{name} {int(bad[0])} has nan or inf values: a vector must be finite")


class _IdsAndSimilarities(NamedTuple):
    ids: list                 # user ids (str or int)
    similarities: np.ndarray  # float32, 1 - cosine distance (1 = same direction)


class Neighbors(_IdsAndSimilarities):
    """The nearest documents to one query in an Index, best first: ``ids, similarities = index.search(...)``.

    ``keys`` (attribute, uint64) are the hits' keys in the document store, so that
    ``Index.fetch_documents`` reads their texts in one query.
    """

    def __new__(cls, ids, similarities, keys=None):
        hits = super().__new__(cls, ids, similarities)
        hits.keys = np.zeros(0, dtype=np.uint64) if keys is None else np.asarray(keys, dtype=np.uint64)
        return hits


Hits = Neighbors  # the earlier name, kept as an alias (docs/api.md)


def embedder_identity(embedder) -> dict:
    """What the manifest records about the embedder that built an index."""
    artifact = embedder.artifact
    manifest = getattr(artifact, "manifest", {}) or {}
    return {"sha256": artifact.sha256, "dim": int(embedder.dim), "path": str(Path(artifact.path).resolve()),
            "precision": manifest.get("precision"), "source": manifest.get("source")}


# -- the index -------------------------------------------------------------------------------

class Index(RetrieverBase):
    """usearch HNSW vectors + SQLite documents, tied to the embedder artifact that built them.

    Build with ``Index.build``, load with ``Index.load``. Searches are thread-safe; mutations
    (``add``, ``remove``) should come from one thread at a time. An index loaded with
    ``view=True`` maps its files read-only and refuses ``add``/``remove``. A retriever
    (crossrank.retriever): ``retrieve_many`` returns candidates with their texts.
    """

    def __init__(self, vectors: usearch_index.Index, store: DocumentStore, settings: dict,
                 embedder=None, embedder_info: dict | None = None, next_key: int = 0,
                 view: bool = False, path: Path | None = None, metadata: dict | None = None):
        self._vectors = vectors
        self._store = store
        self.settings = settings
        self.embedder = embedder
        self.embedder_info = embedder_info or (embedder_identity(embedder) if embedder is not None else {})
        self._next_key = next_key
        self.view = view
        self.path = path
        self.metadata = dict(metadata or {})  # JSON-able notes saved with the index (e.g. corpus name)
        self._mutation = threading.Lock()  # one add / remove / save at a time
        self._lock = ReadWriteLock()         # searches read; the vector and store changes write

    # -- properties ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.settings["dim"])

    @property
    def dtype(self) -> str:
        return self.settings["dtype"]

    @property
    def metric(self) -> str:
        return self.settings["metric"]

    @property
    def expansion_search(self) -> int:
        """HNSW candidates explored per search (higher: better recall, slower); settable."""
        return int(self._vectors.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        value = check_int(value, "expansion_search")
        self._vectors.expansion_search = value
        self.settings["expansion_search"] = value

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, doc_id) -> bool:
        return self._store.keys_of([check_id(doc_id, "id")], missing_ok=True)[0] is not None

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return (f"crossrank.Index({len(self)} documents, dim={self.dim}, dtype={self.dtype!r}, "
                f"metric={self.metric!r}{', view' if self.view else ''}{where})")

    def ids(self) -> list:
        """Every user id, in the order the documents were added."""
        return self._store.all_ids()

    # -- building --------------------------------------------------------------------------
    @classmethod
    def build(cls, embedder, documents: Sequence[str], ids: Sequence | None = None, *,
              dtype: str = "f16", metric: str = "cos", connectivity: int | None = None,
              expansion_add: int | None = None, expansion_search: int | None = None,
              batch_size: int = 512, progress: bool = True, vectors: np.ndarray | None = None) -> "Index":
        """Embed ``documents`` with ``embedder`` and index them.

        dtype: how vectors are stored ("f16" default: half the memory of "f32", same recall at
        MiniLM's 384 dims; "i8": a quarter, but it costs recall on MiniLM vectors). metric: "cos"
        or "ip". connectivity, expansion_add, expansion_search: HNSW settings (defaults 32, 256,
        256; expansion_search can be changed after loading). batch_size: documents per ``embed``
        call (progress bar granularity). vectors: precomputed float32 [n, dim] embeddings of these
        documents by this embedder (skips embedding; e.g. to index one corpus at several dtypes).
        """
        check_choice(dtype, "dtype", DTYPES)
        check_choice(metric, "metric", METRICS)
        check_int(connectivity, "connectivity", MIN_CONNECTIVITY, allow_none=True)
        check_int(expansion_add, "expansion_add", allow_none=True)
        check_int(expansion_search, "expansion_search", allow_none=True)
        dim = int(embedder.dim)
        graph = usearch_index.Index(ndim=dim, metric=metric, dtype=dtype,
                                    connectivity=connectivity or DEFAULT_CONNECTIVITY,
                                    expansion_add=expansion_add or DEFAULT_EXPANSION_ADD,
                                    expansion_search=expansion_search or DEFAULT_EXPANSION_SEARCH)
        settings = {"dim": dim, "dtype": dtype, "metric": metric,
                    "connectivity": int(graph.connectivity), "expansion_add": int(graph.expansion_add),
                    "expansion_search": int(graph.expansion_search)}
        index = cls(graph, DocumentStore.in_memory(), settings, embedder=embedder)
        index.add(documents, ids, batch_size=batch_size, progress=progress, vectors=vectors)
        return index

    def _writable(self, action: str) -> None:
        if self.view:
            raise UsageError(f"cannot {action}: this index was loaded with view=True (memory-mapped, "
                               f"read-only); load it with view=False to modify it")

    def add(self, documents: Sequence[str], ids: Sequence | None = None, *, batch_size: int = 512,
            progress: bool = False, vectors: np.ndarray | None = None) -> list:
        """Embed and add documents; returns their ids. Duplicate ids raise ValueError, nothing added.

        ids default to the documents' keys (ints counting on from the last document added).
        Documents are embedded shortest first so that each ``embed`` call pads little.
        """
        self._writable("add documents")
        texts = check_texts(documents)
        check_int(batch_size, "batch_size")
        with self._mutation:
            keys = list(range(self._next_key, self._next_key + len(texts)))
            if ids is None:
                ids = list(keys)
            else:
                ids = check_ids(ids)
                if len(ids) != len(texts):
                    raise InvalidArgumentError(f"{len(ids)} ids for {len(texts)} documents")
                seen: set = set()
                for value in ids:
                    if (type(value), value) in seen:
                        raise InvalidArgumentError(f"id {value!r} appears twice in ids (ids must be unique)")
                    seen.add((type(value), value))
            if vectors is not None:
                vectors = self._check_vectors(vectors, len(texts))
            elif texts and self.embedder is None:
                raise UsageError("this index has no embedder: pass embedder= to Index.load, or vectors=")
            if not texts:
                return []
            # Documents go into the store first, vectors after (chunk by chunk, each under the write
            # lock): a search never meets a vector without its document.
            self._store.insert(keys, ids, texts)
            try:
                self._add_vectors(texts, np.asarray(keys, dtype=np.uint64), batch_size, progress, vectors)
            except BaseException:
                with self._lock.writing():
                    present = [k for k in keys if self._vectors.contains(k)]
                    if present:
                        self._vectors.remove(present)
                    self._store.delete(keys)
                raise
            self._next_key += len(texts)
        return ids

    def _add_vectors(self, texts: list[str], keys: np.ndarray, batch_size: int, progress: bool,
                     vectors: np.ndarray | None) -> None:
        # threads=1: usearch's concurrent inserts build a different, sometimes worse graph on
        # every run (HNSW recall@10 0.95-1.0 on 240 documents); one thread makes builds
        # reproducible, and embedding, not insertion, is the cost of building.
        if vectors is not None:
            with self._lock.writing():
                self._vectors.add(keys, vectors, threads=1)
            return
        order = np.argsort([len(t) for t in texts], kind="stable")
        bar = None
        if progress:
            from crossrank.progress import progress_bar

            bar = progress_bar(total=len(texts), unit="doc", desc="indexing", smoothing=0.1)
        try:
            for part in chunks(order, batch_size):
                embedded = self._check_vectors(self.embedder.embed([texts[i] for i in part]), len(part))
                with self._lock.writing():
                    self._vectors.add(keys[part], embedded, threads=1)
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()

    def _check_vectors(self, vectors, rows: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (rows, self.dim):
            raise InvalidArgumentError(f"vectors have shape {vectors.shape}; expected ({rows}, {self.dim})")
        _check_finite(vectors, "vectors")
        return np.ascontiguousarray(vectors)

    def remove(self, ids: Sequence) -> int:
        """Remove documents by id; returns how many. An unknown id raises KeyError, nothing removed."""
        self._writable("remove documents")
        if isinstance(ids, (str, int, np.integer)):
            ids = [ids]
        ids = check_ids(ids)
        with self._mutation, self._lock.writing():
            keys = list(dict.fromkeys(self._store.keys_of(ids)))
            self._vectors.remove(np.asarray(keys, dtype=np.uint64))
            self._store.delete(keys)
        return len(keys)

    # -- searching -------------------------------------------------------------------------
    def _query_vectors(self, queries, single: bool) -> np.ndarray:
        if isinstance(queries, np.ndarray):
            vectors = queries.reshape(1, -1) if single and queries.ndim == 1 else queries
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise InvalidArgumentError(f"query vectors have shape {queries.shape}; this index holds "
                                           f"{self.dim}-dim vectors")
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            _check_finite(vectors, "query vector")
            return vectors
        texts = [check_query(queries)] if single else check_queries(queries)
        if self.embedder is None:
            raise UsageError(
                f"this index has no embedder to embed text queries: pass embedder= to Index.load "
                f"(it was built by the artifact at {self.embedder_info.get('path')!r}, sha256 "
                f"{str(self.embedder_info.get('sha256'))[:16]}...), or search with vectors")
        return self._check_vectors(self.embedder.embed(texts), len(texts))

    def search(self, query, k: int = 100, exact: bool = False) -> Neighbors:
        """The k nearest documents to a query text or a [dim] vector, best first.

        exact=True scans every vector (brute force) instead of walking the HNSW graph.
        """
        return self.search_vectors(self._query_vectors(query, single=True), k, exact)[0]

    def search_many(self, queries, k: int = 100, exact: bool = False) -> list[Neighbors]:
        """``search`` for a list of texts or an [n, dim] array; texts are embedded in one call."""
        return self.search_vectors(self._query_vectors(queries, single=False), k, exact)

    def search_vectors(self, vectors: np.ndarray, k: int, exact: bool = False) -> list[Neighbors]:
        """``search`` for an [n, dim] float array of query vectors."""
        k = check_int(k, "k")
        vectors = self._query_vectors(np.asarray(vectors), single=False)
        if len(vectors) == 0:
            return []
        with self._lock.reading():
            return self._search_locked(vectors, k, exact)

    def _search_locked(self, vectors: np.ndarray, k: int, exact: bool) -> list[Neighbors]:
        if len(self) == 0:
            return [Neighbors([], np.zeros(0, dtype=np.float32)) for _ in range(len(vectors))]
        matches = self._vectors.search(vectors, min(k, len(self)), exact=exact)
        keys = np.atleast_2d(matches.keys)
        distances = np.atleast_2d(matches.distances)
        counts = np.atleast_1d(matches.counts) if hasattr(matches, "counts") else [len(matches.keys)]
        valid = [keys[row, : int(counts[row])] for row in range(len(keys))]
        id_of = self._store.ids_by_key(np.unique(np.concatenate(valid)) if valid else [])
        results = []
        for row, row_keys in enumerate(valid):
            missing = [int(key) for key in row_keys if int(key) not in id_of]
            if missing:
                raise IndexFormatError(f"vector key {missing[0]} has no document in the store "
                                       f"{self._store.path or '(memory)'}: the index is inconsistent")
            similarities = (1.0 - distances[row, : len(row_keys)]).astype(np.float32)
            results.append(Neighbors([id_of[int(key)] for key in row_keys], similarities, row_keys))
        return results

    # -- the retriever protocol --------------------------------------------------------------
    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        """Up to k candidates per query with their texts (crossrank.retriever). ``vectors``: the
        queries' [n, dim] vectors (None: embedded here). The search and the fetch of the texts see
        one state of the index (a concurrent remove waits); ``timings`` gets both in ms."""
        k = check_int(k, "k")
        vectors = self._query_vectors(queries if vectors is None else np.asarray(vectors), single=False)
        start = time.perf_counter()
        with self._lock.reading():
            hits = self._search_locked(vectors, k, False) if len(vectors) else []
            searched = time.perf_counter()
            documents = self.fetch_documents(hits)
        if timings is not None:
            timings.update(search=(searched - start) * 1e3, fetch=(time.perf_counter() - searched) * 1e3)
        return [Candidates(h.ids, h.similarities, docs) for h, docs in zip(hits, documents)]

    def describe(self) -> dict:
        return {"kind": "usearch", "path": str(self.path) if self.path else None, "documents": len(self),
                **self.settings, "view": self.view, "score": "cosine similarity (1 - cosine distance)",
                "embedder": {key: self.embedder_info.get(key) for key in ("sha256", "dim", "path", "precision")}}

    # -- reading back ----------------------------------------------------------------------
    def get_documents(self, ids: Sequence) -> list[str]:
        """Texts of the given ids, in order; an unknown id raises KeyError naming it."""
        keys = self._store.keys_of(check_ids(ids))
        rows = self._store.rows_by_key(keys)
        return [rows[key][1] for key in keys]

    def reading(self):
        """A ``with`` block in which add/remove wait: searches and fetches inside it see one state
        of the index (``Pipeline`` searches and fetches the candidates' texts in one)."""
        return self._lock.reading()

    def fetch_documents(self, hits: Sequence[Neighbors]) -> list[list[str]]:
        """The texts of every hit of several search results, in one store query (by key). Hold
        ``reading()`` around the search and the fetch when another thread may remove documents."""
        flat = np.concatenate([h.keys for h in hits]) if hits else np.zeros(0, dtype=np.uint64)
        with self._lock.reading():
            text_of = self._store.texts_by_key(flat)
        return [[text_of[int(key)] for key in h.keys] for h in hits]

    def get_vectors(self, ids: Sequence) -> np.ndarray:
        """Stored vectors of the given ids as float32 [n, dim] (after the dtype's rounding)."""
        keys = np.asarray(self._store.keys_of(check_ids(ids)), dtype=np.uint64)
        if len(keys) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        stored = self._vectors.get(keys, dtype=np.float32)
        return np.stack([np.asarray(row, dtype=np.float32) for row in stored]).reshape(len(keys), self.dim)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index to the folder ``path`` atomically (see the module docstring)."""
        root = self.check_save_path(path)
        root.mkdir(parents=True, exist_ok=True)
        staging = new_staging_folder(root)
        try:
            with self._mutation:  # a consistent copy: add/remove wait, searches go on
                self._write_generation(staging)
            commit_generation(root, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.path = root
        return root

    def _embedder_record(self, root: Path) -> dict:
        """embedder_info plus where the embedder is seen from the index folder, so that an index
        moved together with its artifacts still finds it (``recorded_embedder_path``)."""
        record = dict(self.embedder_info)
        if record.get("path"):
            record["path_from_index"] = os.path.relpath(record["path"], root.resolve())
        return record

    @staticmethod
    def check_save_path(path: str | Path) -> Path:
        """Raise OutputExistsError now if ``save(path)`` could not write there (a file, a folder
        holding other things, an unwritable place): callers check before long work."""
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise OutputExistsError(f"{str(root)!r} exists and is not a folder; an index is saved as a folder")
        foreign = [p.name for p in root.iterdir() if not _made_by_save(p.name)] if root.is_dir() else []
        if foreign and not (root / POINTER).is_file():
            raise OutputExistsError(f"{str(root)!r} is a non-empty folder that holds no crossrank index "
                                    f"(no {POINTER} file; it holds {foreign[0]!r}); refusing to write into it")
        existing = next(p for p in (root, *root.parents) if p.exists())
        if not existing.is_dir():
            raise OutputExistsError(f"cannot create {str(root)!r}: {str(existing)!r} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputExistsError(f"cannot write {str(root)!r}: {str(existing)!r} is not writable")
        return root

    def _write_generation(self, folder: Path) -> None:
        self._vectors.save(str(folder / VECTORS))
        fsync_file(folder / VECTORS)
        self._store.write_copy(folder / DOCUMENTS)
        fsync_file(folder / DOCUMENTS)
        files = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
                 for name in (VECTORS, DOCUMENTS)}
        manifest = {"format": FORMAT_VERSION, "kind": KIND, **self.settings, "count": len(self),
                    "next_key": self._next_key, "embedder": self._embedder_record(folder.parent),
                    "metadata": self.metadata, "files": files,
                    "crossrank_version": __version__, "usearch_version": usearch.__version__,
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        fsync_file(folder / MANIFEST)
        fsync_dir(folder)

    @classmethod
    def load(cls, path: str | Path, view: bool = True, embedder=None, verify: bool = True) -> "Index":
        """Open an index folder written by ``save``.

        view=True memory-maps the vectors and reads documents from disk (fast start, shared page
        cache, read-only); view=False loads both into memory (then ``add``/``remove`` work).
        embedder: the Embedder for text queries; it must be the artifact that built the index
        (same model.onnx sha256 and dim), else EmbedderMismatchError.

        verify=True (default) checks the sha256 of both files against the manifest before either
        is opened (reads them once: ~1 s per GB), so a damaged file is an IndexFormatError, never a
        crash. verify=False is a trust decision for fast starts on files you know are whole: only
        sizes and the usearch header (count, dimensions, scalar type, metric) are checked, and a
        file corrupted inside its body can crash the process in usearch's native code.
        """
        root = Path(path)
        for attempt in range(5):
            pointer = _read_pointer(root)
            try:
                folder, manifest = read_manifest(root)
                if embedder is not None:
                    check_embedder(manifest, embedder, root)
                return cls._open_generation(root, folder, manifest, view, embedder, verify)
            except (IndexFormatError, FileNotFoundError) as err:
                # A concurrent save may have switched CURRENT and removed this generation between
                # our reads: retry on the new one; a damaged generation fails the same way again.
                if attempt == 4 or _read_pointer(root) == pointer:
                    if isinstance(err, FileNotFoundError):
                        raise IndexFormatError(f"index file {err.filename!r} is missing") from err
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_generation(cls, root: Path, folder: Path, manifest: dict, view: bool, embedder,
                         verify: bool) -> "Index":
        for name, expected in manifest["files"].items():
            file_path = folder / name
            if not file_path.is_file():
                raise IndexFormatError(f"index file {str(file_path)!r} is missing")
            size = file_path.stat().st_size
            if size != expected["bytes"]:
                raise IndexFormatError(f"index file {str(file_path)!r} is truncated or corrupted: "
                                       f"{size} bytes, the manifest says {expected['bytes']}")
            if verify and sha256_file(file_path) != expected["sha256"]:
                raise IndexFormatError(f"index file {str(file_path)!r} is corrupted: its sha256 does not "
                                       f"match {str(folder / MANIFEST)!r}")
        graph = _open_vectors(folder / VECTORS, manifest, view)
        store = DocumentStore.open(folder / DOCUMENTS, view)
        if store.count() != len(graph) or len(graph) != manifest["count"]:
            raise IndexFormatError(f"index {str(folder)!r} is inconsistent: {len(graph)} vectors in "
                                   f"{VECTORS}, {store.count()} documents in {DOCUMENTS}, "
                                   f"{manifest['count']} in {MANIFEST}")
        settings = {key: manifest[key] for key in ("dim", "dtype", "metric", "connectivity",
                                                    "expansion_add", "expansion_search")}
        return cls(graph, store, settings, embedder=embedder, embedder_info=manifest["embedder"],
                   next_key=int(manifest["next_key"]), view=view, path=root,
                   metadata=manifest.get("metadata"))


# -- loading helpers -------------------------------------------------------------------------

USEARCH_SCALARS = {"f32": "F32", "f16": "F16", "i8": "I8"}
USEARCH_METRICS = {"cos": "Cos", "ip": "IP"}


def _read_pointer(root: Path) -> bytes | None:
    """CURRENT as it is on disk (to notice a concurrent save switching it; read_manifest parses it)."""
    try:
        return (root / POINTER).read_bytes()
    except OSError:
        return None


def recorded_embedder_path(path: str | Path) -> Path:
    """The embedder artifact an index at ``path`` was built with, as recorded in its manifest
    (absolute, or relative to the index folder when the two moved together); MissingFileError
    saying what to pass when neither exists."""
    root = Path(path)
    _, manifest = read_manifest(root)
    info = manifest["embedder"]
    candidates = [Path(p) for p in (info.get("path"), info.get("path_from_index") and root / info["path_from_index"])
                  if p]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MissingFileError(f"index {str(root)!r} was built by the embedder at {info.get('path')!r} (model.onnx "
                           f"sha256 {str(info.get('sha256'))[:16]}...), which is not there any more: pass the "
                           f"same artifact with --embedder ART (embedder= in Python)")


def check_embedder(manifest: dict, embedder, root: Path) -> None:
    """Raise EmbedderMismatchError unless ``embedder`` is the artifact that built the index."""
    built = manifest["embedder"]
    given = embedder_identity(embedder)
    if given["dim"] != manifest["dim"]:
        raise EmbedderMismatchError(
            f"index {str(root)!r} holds {manifest['dim']}-dim vectors from the embedder at "
            f"{built.get('path')!r}, but the embedder at {given['path']!r} makes {given['dim']}-dim "
            f"vectors: load it with the embedder that built it, or rebuild the index")
    if given["sha256"] != built.get("sha256"):
        raise EmbedderMismatchError(
            f"index {str(root)!r} was built by the embedder at {built.get('path')!r} "
            f"(model.onnx sha256 {str(built.get('sha256'))[:16]}..., {built.get('precision')}), but the "
            f"embedder given is {given['path']!r} (sha256 {given['sha256'][:16]}..., "
            f"{given['precision']}): its vectors would not be comparable. Use the same artifact, or "
            f"rebuild the index with this one")


def _open_vectors(path: Path, manifest: dict, view: bool) -> usearch_index.Index:
    try:
        meta = usearch_index.Index.metadata(str(path))
    except (ValueError, RuntimeError) as err:
        raise IndexFormatError(f"index file {str(path)!r} is not a readable usearch index: {err}") from err
    if meta is None or int(meta["dimensions"]) != manifest["dim"]:
        dims = None if meta is None else meta["dimensions"]
        raise IndexFormatError(f"index file {str(path)!r} holds {dims}-dim vectors, its manifest says "
                               f"{manifest['dim']}")
    header = {"count": int(meta.get("count_present", -1)), "dtype": getattr(meta.get("kind_scalar"), "name", None),
              "metric": getattr(meta.get("kind_metric"), "name", None)}
    expected = {"count": manifest["count"], "dtype": USEARCH_SCALARS[manifest["dtype"]],
                "metric": USEARCH_METRICS[manifest["metric"]]}
    if header != expected:
        raise IndexFormatError(f"index file {str(path)!r} does not match its manifest: its header says "
                               f"{header}, the manifest {expected}")
    graph = usearch_index.Index(ndim=manifest["dim"], metric=manifest["metric"], dtype=manifest["dtype"],
                                connectivity=manifest.get("connectivity"),
                                expansion_add=manifest.get("expansion_add"),
                                expansion_search=manifest.get("expansion_search"))
    try:
        (graph.view if view else graph.load)(str(path))
    except (ValueError, RuntimeError) as err:
        raise IndexFormatError(f"index file {str(path)!r} is truncated or corrupted: {err}") from err
    if manifest.get("expansion_search"):
        graph.expansion_search = int(manifest["expansion_search"])
    return graph
