"""On-disk layout of a saved Index, and how ``save`` replaces it atomically.

An index is a folder of generations::

    DIR/CURRENT                       the name of the live generation, e.g. "gen-000003"
    DIR/gen-000003/index.json         manifest: embedder sha256 + dim, dtype, metric, HNSW
                                      settings, count, next key, size and sha256 of each file
    DIR/gen-000003/vectors.usearch    the usearch HNSW graph with its vectors
    DIR/gen-000003/documents.sqlite   key -> (user id, text)

``save`` writes a new generation into a temporary folder inside DIR, fsyncs every file and the
folder, renames it to ``gen-N`` and only then replaces ``CURRENT`` with ``os.replace`` (one
atomic rename of a small file: the commit point). A crash at any moment leaves ``CURRENT``
naming a whole generation: the previous one until that rename, the new one after it. Renaming a
folder over an existing one cannot be done atomically on POSIX, which is why the pointer file
exists. Older generations and dead savers' leftovers are removed after the switch.

Saves of one index from several processes take turns on an advisory lock (``flock`` on the index
folder itself, nothing created) from claiming the generation name to the clean-up; writing the
generation itself runs unlocked.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from crossrank.errors import IndexFormatError, check_fields, is_int, is_one_of, is_type, plain_file_name
from crossrank.locks import file_lock, pid_alive

FORMAT_VERSION = 1
KIND = "crossrank-index"
POINTER = "CURRENT"
MANIFEST = "index.json"
VECTORS = "vectors.usearch"
DOCUMENTS = "documents.sqlite"
DTYPES = ("f32", "f16", "i8")
METRICS = ("cos", "ip")  # similarity = 1 - distance for both (ip on unit vectors == cos)
MIN_CONNECTIVITY = 2     # usearch: fewer edges per node and the graph degenerates into ropes


def _is_files(files) -> str | None:
    if not isinstance(files, dict) or set(files) != {VECTORS, DOCUMENTS}:
        return f"must list exactly {VECTORS!r} and {DOCUMENTS!r}, got {sorted(files) if isinstance(files, dict) else files!r:.80}"
    for name, spec in files.items():
        if plain_file_name(name):
            return plain_file_name(name)
        if not isinstance(spec, dict) or set(spec) != {"bytes", "sha256"} or is_int(0)(spec["bytes"]) \
                or not isinstance(spec["sha256"], str) or len(spec["sha256"]) != 64:
            return f"entry {name!r} must be {{\"bytes\": int, \"sha256\": 64 hex digits}}, got {spec!r:.80}"
    return None


def _is_embedder(info) -> str | None:
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or is_int(1)(info.get("dim")):
        return f"must record the embedder's model sha256 and dim, got {info!r:.80}"
    return None


MANIFEST_FIELDS = {
    "format": is_one_of(FORMAT_VERSION), "kind": is_one_of(KIND), "dim": is_int(1, 1 << 16),
    "dtype": is_one_of(*DTYPES), "metric": is_one_of(*METRICS), "connectivity": is_int(MIN_CONNECTIVITY),
    "expansion_add": is_int(1), "expansion_search": is_int(1), "count": is_int(0), "next_key": is_int(0),
    "embedder": _is_embedder, "metadata": is_type(dict), "files": _is_files,
    "crossrank_version": is_type(str), "usearch_version": is_type(str), "saved_at": is_type(str),
}
REQUIRED_FIELDS = ("format", "kind", "dim", "dtype", "metric", "connectivity", "expansion_add", "expansion_search",
                   "count", "next_key", "embedder", "files")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds (Windows): rename durability is the FS's
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(root: Path) -> tuple[Path, dict]:
    """The live generation folder of an index folder and its parsed manifest."""
    if not root.is_dir():
        raise IndexFormatError(f"index folder {str(root)!r} does not exist or is not a folder "
                               f"(build one with `crossrank index build`)")
    pointer = root / POINTER
    if not pointer.is_file():
        raise IndexFormatError(f"{str(root)!r} is not a crossrank index: no {POINTER} file")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, OSError) as err:
        raise IndexFormatError(f"{str(pointer)!r} is corrupted or unreadable ({err}): it should name the live "
                               f"generation") from None
    if not name.startswith("gen-") or "/" in name or "\\" in name:
        raise IndexFormatError(f"{str(pointer)!r} is corrupted: it holds {name[:40]!r}, not a generation name")
    folder = root / name
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise IndexFormatError(f"index manifest {str(manifest_path)!r} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"index manifest {str(manifest_path)!r} is not valid JSON: {err}") from err
    where = repr(str(manifest_path))
    if isinstance(manifest, dict) and manifest.get("kind") != KIND:
        raise IndexFormatError(f"{where} is not a crossrank index manifest (its 'kind' is {manifest.get('kind')!r})")
    if isinstance(manifest, dict) and manifest.get("format") != FORMAT_VERSION:
        raise IndexFormatError(f"{where} has format {manifest.get('format')!r}; this crossrank reads format "
                               f"{FORMAT_VERSION}: rebuild the index")
    check_fields(manifest, where, MANIFEST_FIELDS, REQUIRED_FIELDS, IndexFormatError)
    if manifest["next_key"] < manifest["count"] or manifest["embedder"]["dim"] != manifest["dim"]:
        raise IndexFormatError(f"{where} is inconsistent: count {manifest['count']}, next_key {manifest['next_key']}, "
                               f"dim {manifest['dim']}, embedder dim {manifest['embedder']['dim']}")
    return folder, manifest


def new_staging_folder(root: Path) -> Path:
    """An empty temporary folder inside ``root`` for a generation being written."""
    staging = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def claim_generation(root: Path, staging: Path) -> str:
    """Rename the fsynced staging folder to the next free ``gen-N``; returns that name."""
    existing = [int(p.name[4:]) for p in root.glob("gen-*") if p.name[4:].isdigit()]
    number = max(existing, default=0) + 1
    while True:
        name = f"gen-{number:06d}"
        try:
            os.rename(staging, root / name)  # fails if a concurrent saver took this name
            fsync_dir(root)
            return name
        except OSError:
            if not (root / name).exists():
                raise
            number += 1


def write_pointer(root: Path, generation: str) -> None:
    temp = root / f".{POINTER}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    with open(temp, "w") as handle:
        handle.write(generation + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, root / POINTER)  # the commit point
    fsync_dir(root)


def remove_stale(root: Path) -> None:
    """Drop every generation but the one ``CURRENT`` names, and the leftovers of savers that died.
    Call it holding the index's lock (``commit_generation`` does)."""
    keep = (root / POINTER).read_text().strip()
    for entry in root.iterdir():
        if entry.name.startswith("gen-") and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith((".tmp-", f".{POINTER}.")):
            parts = entry.name.lstrip(".").replace(".", "-").split("-")
            pid = next((int(p) for p in parts if p.isdigit()), None)
            if pid is not None and pid != os.getpid() and not pid_alive(pid):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def commit_generation(root: Path, staging: Path) -> str:
    """Make the fsynced ``staging`` folder the live generation; returns its name.

    Savers of one index take turns on an advisory lock on the folder itself (across processes),
    so claiming a name, switching ``CURRENT`` and removing the old generations never interleave
    with another save's: clean-up can never delete the generation ``CURRENT`` names.
    """
    with file_lock(root):
        generation = claim_generation(root, staging)
        write_pointer(root, generation)
        remove_stale(root)
    return generation


def index_info(path: str | Path) -> dict:
    """The manifest of a saved index (no vectors loaded)."""
    folder, manifest = read_manifest(Path(path))
    return {**manifest, "generation": folder.name,
            "bytes_on_disk": sum(spec["bytes"] for spec in manifest["files"].values())}
