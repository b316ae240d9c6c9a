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
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from crossrank.errors import IndexFormatError

FORMAT_VERSION = 1
KIND = "crossrank-index"
POINTER = "CURRENT"
MANIFEST = "index.json"
VECTORS = "vectors.usearch"
DOCUMENTS = "documents.sqlite"


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
    name = pointer.read_text().strip()
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
    required = ("format", "kind", "dim", "dtype", "metric", "count", "next_key", "embedder", "files")
    missing = [key for key in required if key not in manifest]
    if missing or manifest.get("kind") != KIND:
        raise IndexFormatError(f"{str(manifest_path)!r} is not a crossrank index manifest "
                               f"(missing {missing or ['kind']})")
    if manifest["format"] != FORMAT_VERSION:
        raise IndexFormatError(f"{str(manifest_path)!r} has format {manifest['format']!r}; this crossrank "
                               f"reads format {FORMAT_VERSION}: rebuild the index")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale(root: Path, keep: str) -> None:
    """Drop older generations and the leftovers of savers that died (best effort)."""
    for entry in root.iterdir():
        if entry.name.startswith("gen-") and entry.name != keep and entry.name < keep:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith((".tmp-", f".{POINTER}.")):
            parts = entry.name.lstrip(".").replace(".", "-").split("-")
            pid = next((int(p) for p in parts if p.isdigit()), None)
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def index_info(path: str | Path) -> dict:
    """The manifest of a saved index (no vectors loaded)."""
    folder, manifest = read_manifest(Path(path))
    return {**manifest, "generation": folder.name,
            "bytes_on_disk": sum(spec["bytes"] for spec in manifest["files"].values())}
