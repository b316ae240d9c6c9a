"""BM25 candidates beside an embedded ``crossrank.Index`` (extra ``bm25``: bm25s, sparse-matrix BM25).

``BM25Retriever.build(index)`` tokenizes the index's documents (bm25s' tokenizer: lower-cased
words of 2+ letters or digits, English stop words dropped, no stemming) and scores them with
Lucene's BM25 (k1 1.5, b 0.75). ``save(index_path)`` writes it into the index folder, in
``bm25/`` with the same atomic generations as the index (crossrank.index_files), tied to the
index generation it was built from: after the index is saved again, ``load`` refuses the stale
BM25 (rebuild it: ``crossrank index build --hybrid``). Only documents sharing a word with the
query are candidates (score > 0), best first, ties in the index's order.

``crossrank.Hybrid(index, BM25Retriever.load(path, index))`` fuses them with the dense candidates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from crossrank.errors import IndexFormatError, check_int
from crossrank.index_files import POINTER, commit_generation, fsync_dir, fsync_file, new_staging_folder, read_manifest
from crossrank.retriever import Candidates, RetrieverBase, empty_candidates

try:
    import bm25s
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError(f"BM25 candidates need the 'bm25' extra: pip install 'crossrank[bm25]' ({err})") from err

FOLDER = "bm25"
RECORD = "bm25.json"
IDS = "ids.json"
MODEL = "model"
KIND = "crossrank-bm25"
STOPWORDS = "en"


def _tokenize(texts: Sequence[str]):
    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=False, return_ids=False)


class BM25Retriever(RetrieverBase):
    """Lexical candidates over an Index's documents (their texts come from the Index)."""

    needs_vectors = False

    def __init__(self, model, ids: list, index, record: dict):
        self.model = model
        self.ids = ids
        self.index = index
        self.record = record

    @classmethod
    def build(cls, index) -> "BM25Retriever":
        """BM25 over every document of ``index`` (about a second per 10,000 short documents)."""
        ids = index.ids()
        texts = index.get_documents(ids)
        model = bm25s.BM25()
        model.index(_tokenize(texts), show_progress=False)
        return cls(model, ids, index, {"kind": KIND, "count": len(ids), "stopwords": STOPWORDS,
                                       "k1": model.k1, "b": model.b, "method": model.method})

    def save(self, index_path: str | Path) -> Path:
        """Write into ``index_path/bm25`` atomically, recording the index generation it was built from."""
        root = Path(index_path)
        generation = read_manifest(root)[0].name
        folder = root / FOLDER
        folder.mkdir(exist_ok=True)
        staging = new_staging_folder(folder)
        self.model.save(str(staging / MODEL), show_progress=False)
        (staging / IDS).write_text(json.dumps(self.ids))
        (staging / RECORD).write_text(json.dumps({**self.record, "index_generation": generation}))
        for path in [*(staging / MODEL).iterdir(), staging / IDS, staging / RECORD]:
            fsync_file(path)
        fsync_dir(staging / MODEL)
        fsync_dir(staging)
        commit_generation(folder, staging)
        return folder

    @classmethod
    def load(cls, index_path: str | Path, index) -> "BM25Retriever":
        """The BM25 saved beside the index at ``index_path``; IndexFormatError when there is none or
        it was built from another generation of the index."""
        root = Path(index_path)
        pointer = root / FOLDER / POINTER
        if not pointer.is_file():
            raise IndexFormatError(f"index {str(root)!r} has no BM25 index beside it: build it with `crossrank index "
                                   f"build --hybrid` (or BM25Retriever.build(index).save(path))")
        folder = root / FOLDER / pointer.read_text().strip()
        try:
            record = json.loads((folder / RECORD).read_text())
            ids = json.loads((folder / IDS).read_text())
            model = bm25s.BM25.load(str(folder / MODEL), mmap=True)
        except (OSError, ValueError) as err:
            raise IndexFormatError(f"BM25 index {str(folder)!r} is unreadable ({err}): rebuild it with `crossrank "
                                   f"index build --hybrid`") from err
        generation = read_manifest(root)[0].name
        if record.get("kind") != KIND or record.get("index_generation") != generation or len(ids) != len(index):
            raise IndexFormatError(f"the BM25 index in {str(folder)!r} was built from index generation "
                                   f"{record.get('index_generation')!r} ({len(ids)} documents), the index is now "
                                   f"{generation!r} ({len(index)}): rebuild it with `crossrank index build --hybrid`")
        return cls(model, ids, index, record)

    def retrieve_many(self, queries: Sequence[str], vectors: np.ndarray | None, k: int,
                      timings: dict | None = None) -> list[Candidates]:
        k = check_int(k, "k")
        start = time.perf_counter()
        if not self.ids:
            return [empty_candidates() for _ in queries]
        found = self.model.retrieve(_tokenize(queries), k=min(k, len(self.ids)), show_progress=False, n_threads=0)
        rankings = []
        for positions, scores in zip(found.documents, found.scores):
            kept = sorted((-float(score), int(position)) for position, score in zip(positions, scores) if score > 0)
            rankings.append(([self.ids[p] for _, p in kept], np.array([-s for s, _ in kept], dtype=np.float32)))
        searched = time.perf_counter()
        with self.index.reading():
            wanted = list(dict.fromkeys(i for ids, _ in rankings for i in ids))
            text_of = dict(zip(wanted, self.index.get_documents(wanted))) if wanted else {}
        if timings is not None:
            timings.update(search=(searched - start) * 1e3, fetch=(time.perf_counter() - searched) * 1e3)
        return [Candidates(ids, scores, [text_of[i] for i in ids]) for ids, scores in rankings]

    def describe(self) -> dict:
        return {"kind": "bm25", "library": f"bm25s {bm25s.__version__}", "documents": len(self.ids),
                "k1": self.record.get("k1"), "b": self.record.get("b"), "stopwords": STOPWORDS,
                "score": "BM25 (Lucene variant)"}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, doc_id) -> bool:
        return doc_id in self.index
