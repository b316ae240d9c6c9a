"""Milvus as crossrank's first stage (extra ``milvus``: pymilvus), through ``pymilvus.MilvusClient``,
the client of distributed Milvus and Zilliz Cloud.

A collection crossrank owns: ``id`` VARCHAR primary key, ``document`` VARCHAR (at most 65,535
bytes of UTF-8), ``metadata`` JSON (nullable), ``embedding`` FLOAT_VECTOR(dim) with an HNSW index
(or AUTOINDEX) on COSINE, consistency level Strong (an upsert or delete is visible to the next
search). Its properties (and description) hold crossrank's record (JSON: the embedder's
model.onnx sha256 and dim): a collection without it is not crossrank's and is never written to
or dropped. A mismatched embedder is refused (EmbedderMismatchError).

- ``MilvusStore.build(url, collection, embedder, documents, ids)``: create, then upsert in batches
  (progress bar). Milvus has no multi-batch transaction: a load killed midway leaves the batches
  sent so far (each row whole); ``force=True`` drops crossrank's old collection first, so
  searches fail until the new one is loaded (pgvector's build, one transaction, has no such gap).
- ``upsert`` / ``delete`` by id; ``retrieve_many``: one ``search`` call for a batch of query
  vectors with ``output_fields`` (texts and metadata in the same round trip), ``ef`` =
  max(ef_search, k).

URLs: ``milvus://host:19530`` (``http://``), ``milvus+https://host`` (``https://``), or
``http(s)://...`` as pymilvus takes them; ``user:password@`` in the URL or the environment
variable ``MILVUS_TOKEN`` authenticate. Tests run against ``milvus-lite``, a lighter pure-Python
re-implementation of the Milvus server, and use only calls distributed Milvus supports.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from crossrank.errors import (InvalidArgumentError, NotOwnedError, OutputExistsError, StoreError, UsageError,
                              check_ids, check_int)
from crossrank.index import DEFAULT_EXPANSION_SEARCH as DEFAULT_EF_SEARCH  # one default: the Index's (256)
from crossrank.retriever import Candidates, RetrieverBase
from crossrank.stores.common import (RECORD_KIND, check_documents, check_name, check_store_embedder, embedded_batches,
                              mask_credentials, mask_url, store_record)

try:
    from pymilvus import DataType, MilvusClient, MilvusException
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError(f"Milvus stores need the 'milvus' extra: pip install 'crossrank[milvus]' ({err})") from err

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 128
MAX_DOCUMENT_BYTES = 65535
MAX_ID_BYTES = 4096  # ids are often URLs: Semanlink has one of 1,253 bytes
RECORD_PROPERTY = "crossrank.record"
INDEX_TYPES = ("HNSW", "AUTOINDEX")


def client_uri(url: str) -> tuple[str, str | None]:
    """(the URI pymilvus takes, the token) for a ``milvus://`` / ``milvus+https://`` / ``http(s)://`` URL."""
    parts = urlsplit(url)
    scheme = {"milvus": "http", "milvus+https": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise InvalidArgumentError(f"Milvus URL {mask_url(url)!r} is not accepted: expected milvus://HOST:PORT, "
                                   f"milvus+https://HOST[:PORT] or http(s)://HOST:PORT")
    token = f"{parts.username}:{parts.password}" if parts.password is not None else os.environ.get("MILVUS_TOKEN")
    try:
        port = parts.port
    except ValueError:
        raise InvalidArgumentError(f"Milvus URL {mask_url(url)!r} has a bad port: expected a number") from None
    netloc = parts.hostname + (f":{port}" if port else "")
    return urlunsplit((scheme, netloc, parts.path, "", "")), token


class MilvusStore(RetrieverBase):
    """A Milvus collection as a retriever; see the module docstring."""

    def __init__(self, client, url: str, collection: str, record: dict, *, embedder=None,
                 ef_search: int | None = None):
        self.client = client
        self.url = url
        self.collection = collection
        self.record = record
        self.embedder = embedder
        self.embedder_info = dict(record.get("embedder") or {})
        self.dim = int(record["dim"])
        self.ef_search = check_int(ef_search, "ef_search", allow_none=True) or DEFAULT_EF_SEARCH

    @property
    def where(self) -> str:
        return f"{mask_url(self.url)} collection {self.collection!r}"

    # -- connecting -------------------------------------------------------------------------
    @staticmethod
    def connect(url: str):
        uri, token = client_uri(url)
        try:
            # A channel and gRPC subchannel of its own (one another client's server-closed connection cannot
            # fail it); 30 s: a pure-Python server (Milvus Lite) on busy cores can take over 10 s to answer.
            return MilvusClient(uri=uri, token=token or "", timeout=30, dedicated=True,
                                grpc_options={"grpc.use_local_subchannel_pool": 1})
        except Exception as err:  # pymilvus raises MilvusException or grpc errors for an unreachable server
            raise StoreError(f"cannot connect to Milvus at {mask_url(url)}: {_message(err)}") from None

    def _call(self, what: str, method: str, *args, **kwargs):
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as err:
            raise StoreError(f"{self.where}: {what} failed: {_message(err)}") from None

    @staticmethod
    def _record_of(client, collection: str, url: str) -> dict | None:
        if not client.has_collection(collection):
            return None
        info = client.describe_collection(collection)
        text = (info.get("properties") or {}).get(RECORD_PROPERTY) or info.get("description") or ""
        try:
            record = json.loads(text) if text else None
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
            raise NotOwnedError(f"collection {collection!r} at {mask_url(url)} exists and was not created by crossrank: "
                                f"crossrank never writes to or drops it; choose another collection name")
        return record

    # -- making and opening -------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, collection: str, embedder=None, ef_search: int | None = None) -> "MilvusStore":
        client = cls.connect(url)
        try:
            record = cls._record_of(client, collection, url)
        except MilvusException as err:
            raise StoreError(f"Milvus at {mask_url(url)}: {_message(err)}") from None
        if record is None:
            raise StoreError(f"{mask_url(url)} has no collection {collection!r}: build one with `crossrank index build "
                             f"--store URL --table {collection}` (MilvusStore.build)")
        check_store_embedder(record, embedder, f"collection {collection!r} at {mask_url(url)}")
        store = cls(client, url, collection, record, embedder=embedder, ef_search=ef_search)
        store._call("loading the collection", "load_collection", collection)
        return store

    @classmethod
    def build(cls, url: str, collection: str, embedder, documents: Sequence[str], ids: Sequence, *,
              metadata: Sequence[dict] | None = None, vectors: np.ndarray | None = None, force: bool = False,
              index_type: str = "HNSW", m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
              ef_search: int | None = None, batch_size: int = 256, progress: bool = True) -> "MilvusStore":
        """Create crossrank's collection and load the embedded documents (see the module docstring)."""
        check_name(collection, "collection")
        if index_type not in INDEX_TYPES:
            raise InvalidArgumentError(f"index_type {index_type!r} is not one of {INDEX_TYPES}")
        check_int(m, "m", low=2, high=100)
        check_int(ef_construction, "ef_construction", low=4, high=1000)
        dim = int(embedder.dim)
        texts, ids, metadata, vectors = check_documents(documents, ids, metadata, vectors, dim)
        _check_sizes(texts, ids)
        client = cls.connect(url)
        record = store_record(embedder, dim, metric="cos", index_type=index_type,
                              hnsw={"m": m, "ef_construction": ef_construction})
        store = cls(client, url, collection, record, embedder=embedder, ef_search=ef_search)
        old = store._call("reading the collection", "has_collection", collection) and \
            cls._record_of(client, collection, url)
        if old and not force:
            raise OutputExistsError(f"collection {collection!r} at {mask_url(url)} exists: pass force=True (--force) "
                                    f"to replace it, or add documents with upsert")
        if old:
            store._call("dropping crossrank's old collection", "drop_collection", collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=json.dumps(record))
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("document", DataType.VARCHAR, max_length=MAX_DOCUMENT_BYTES)
        schema.add_field("metadata", DataType.JSON, nullable=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        index_params = client.prepare_index_params()
        params = {"M": m, "efConstruction": ef_construction} if index_type == "HNSW" else {}
        index_params.add_index(field_name="embedding", index_type=index_type, metric_type="COSINE", params=params)
        store._call("creating the collection", "create_collection", collection, schema=schema,
                    index_params=index_params, consistency_level="Strong",
                    properties={RECORD_PROPERTY: json.dumps(record)})
        store._upsert_rows(texts, ids, metadata, vectors, batch_size, progress, "loading")
        store._call("flushing", "flush", collection)
        store._call("loading the collection", "load_collection", collection)
        return store

    # -- writing ----------------------------------------------------------------------------
    def _upsert_rows(self, texts, ids, metadata, vectors, batch_size, progress, desc) -> None:
        for part, batch in embedded_batches(self.embedder, texts, vectors, batch_size, progress, desc):
            rows = [{"id": ids[i], "document": texts[i], "metadata": metadata[i] if metadata else None,
                     "embedding": vector.tolist()} for i, vector in zip(part, batch)]
            self._call("upsert", "upsert", self.collection, rows)

    def upsert(self, documents: Sequence[str], ids: Sequence, *, metadata: Sequence[dict] | None = None,
               vectors: np.ndarray | None = None, batch_size: int = 256, progress: bool = False) -> int:
        """Insert or replace documents by id (one ``upsert`` call per batch; each row is whole)."""
        texts, ids, metadata, vectors = check_documents(documents, ids, metadata, vectors, self.dim)
        _check_sizes(texts, ids)
        self._writable()
        self._upsert_rows(texts, ids, metadata, vectors, batch_size, progress, "upserting")
        return len(texts)

    def delete(self, ids: Sequence) -> int:
        """Delete documents by id; returns how many of them there were."""
        if isinstance(ids, (str, int, np.integer)):
            ids = [ids]
        ids = [str(i) for i in check_ids(ids)]
        self._writable()
        present = self._present(ids)
        if present:
            self._call("delete", "delete", self.collection, ids=present)
        return len(present)

    def _writable(self) -> None:
        if self._record_of(self.client, self.collection, self.url) is None:
            raise UsageError(f"{self.where} does not exist any more")

    def _present(self, ids: list[str]) -> list[str]:
        found = set()
        for start in range(0, len(ids), 1000):
            part = ids[start: start + 1000]
            rows = self._call("query", "query", self.collection, filter=f"id in {json.dumps(part)}", output_fields=["id"])
            found.update(row["id"] for row in rows)
        return [i for i in ids if i in found]

    # -- searching --------------------------------------------------------------------------
    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        k = check_int(k, "k")
        vectors = self.query_vectors(queries, vectors)
        start = time.perf_counter()
        if len(vectors) == 0:
            return []
        params = {"params": {"ef": max(self.ef_search, k)}} if self.record.get("index_type", "HNSW") == "HNSW" else {}
        results = self._call("search", "search", self.collection, data=vectors.tolist(), limit=k, anns_field="embedding",
                             output_fields=["document", "metadata"], search_params=params)
        out = []
        for hits in results:
            hits = sorted(hits, key=lambda h: (-h["distance"], h["id"]))
            out.append(Candidates([h["id"] for h in hits], np.array([h["distance"] for h in hits], dtype=np.float32),
                                  [h["entity"]["document"] for h in hits], [h["entity"].get("metadata") for h in hits]))
        if timings is not None:
            timings.update(search=(time.perf_counter() - start) * 1e3, fetch=0.0)
        return out

    def __len__(self) -> int:
        rows = self._call("count", "query", self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __contains__(self, doc_id) -> bool:
        return bool(self._present([str(doc_id)]))

    def get_documents(self, ids: Sequence) -> list[str]:
        from crossrank.errors import UnknownIdError

        ids = [str(i) for i in check_ids(ids)]
        rows = self._call("query", "query", self.collection, filter=f"id in {json.dumps(ids)}",
                          output_fields=["id", "document"])
        text_of = {row["id"]: row["document"] for row in rows}
        missing = [i for i in ids if i not in text_of]
        if missing:
            raise UnknownIdError(f"{len(missing)} id(s) are not in {self.where}, e.g. {missing[0]!r}")
        return [text_of[i] for i in ids]

    def describe(self) -> dict:
        return {"kind": "milvus", "where": self.where, "collection": self.collection, "documents": len(self),
                "dim": self.dim, "metric": "cos", "index_type": self.record.get("index_type"),
                "hnsw": self.record.get("hnsw"), "ef_search": self.ef_search,
                "score": "cosine similarity", "embedder": {key: self.embedder_info.get(key)
                                                           for key in ("sha256", "dim", "path", "precision")}}

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"crossrank.stores.milvus.MilvusStore({self.where})"


def _check_sizes(texts: list[str], ids: list[str]) -> None:
    for what, values, limit in (("document", texts, MAX_DOCUMENT_BYTES), ("id", ids, MAX_ID_BYTES)):
        for i, value in enumerate(values):
            if len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
                advice = "split long documents into passages" if what == "document" else "use shorter ids"
                raise InvalidArgumentError(f"{what} {i} is {len(value.encode('utf-8'))} bytes of UTF-8; crossrank's "
                                           f"Milvus {what} field holds at most {limit} ({advice})")


def _message(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return " ".join(mask_credentials(text).split())[:300]
