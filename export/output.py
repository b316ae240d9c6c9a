"""Where an export writes: checks made before any work, and the atomic replacement at the end.

- ``check_output``: OUT must not be SRC, nor a folder above or inside it; an existing OUT is
  replaced only with ``force`` and only if it is an empty folder or a crossrank artifact holding
  nothing but what crossrank wrote (its manifest's files, manifest.json, runtime.json, certificates.json).
- ``clean_stale``: leftovers of exports of the same OUT whose process died (``.OUT.partial-PID``
  build folders are removed; an ``.OUT.old-PID`` folder is moved back to OUT when OUT is missing —
  the old artifact of a replacement that was interrupted — else removed).
- ``replace_atomically``: the finished build folder becomes OUT by renames only (old OUT aside,
  new one in, then the old one removed), exports into one folder taking turns on a lock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from crossrank.artifact import KINDS, MANIFEST
from crossrank.errors import OutputExistsError
from crossrank.certificate import CERTIFICATES_FILE
from crossrank.locks import file_lock, pid_alive
from crossrank.settings import RUNTIME_FILE


def _crossrank_artifact_files(folder: Path) -> set[str] | None:
    """The names a crossrank artifact at ``folder`` consists of, or None if it is not one."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") not in KINDS or not isinstance(manifest.get("files"), dict):
        return None
    return {MANIFEST, RUNTIME_FILE, CERTIFICATES_FILE, *map(str, manifest["files"])}


def check_output(out: Path, src: Path | None, force: bool) -> None:
    """Refuse an OUT that would lose data; see the module docstring."""
    if src is not None:
        out_real, src_real = out.resolve(), src.resolve()
        if out_real == src_real or out_real in src_real.parents or src_real in out_real.parents:
            relation = ("is" if out_real == src_real else "contains" if out_real in src_real.parents
                        else "is inside")
            raise OutputExistsError(f"output {str(out)!r} {relation} the source folder {str(src)!r}: write the "
                                    f"artifact to a folder of its own")
    if not out.exists():
        for parent in out.parents:  # the nearest existing ancestor must be a writable folder
            if parent.exists():
                if not parent.is_dir():
                    raise OutputExistsError(f"cannot create {str(out)!r}: {str(parent)!r} is not a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise OutputExistsError(f"cannot create {str(out)!r}: {str(parent)!r} is not writable")
                break
        return
    if not out.is_dir():
        raise OutputExistsError(f"output {str(out)!r} exists and is a file, not an artifact folder; "
                                f"crossrank will not replace it")
    if not force:
        raise OutputExistsError(f"output {str(out)!r} already exists; pass --force to replace it")
    entries = {entry.name for entry in out.iterdir()}
    if not entries:
        return
    ours = _crossrank_artifact_files(out)
    if ours is None:
        raise OutputExistsError(f"output {str(out)!r} is not a crossrank artifact (no manifest.json of one): "
                                f"--force replaces only an artifact crossrank exported; choose another folder")
    foreign = sorted(entries - ours)
    if foreign:
        raise OutputExistsError(f"output {str(out)!r} is a crossrank artifact but also holds {foreign[0]!r}, which "
                                f"crossrank did not write: move it away, or choose another folder")


def _leftovers(out: Path):
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(\d+)$")
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            yield entry, match.group(1), int(match.group(2))


def clean_stale(out: Path) -> list[Path]:
    """Remove (or restore) leftovers of dead exports of ``out``; returns what was removed."""
    removed = []
    with file_lock(out.parent):
        for entry, what, pid in _leftovers(out):
            if pid == os.getpid() or pid_alive(pid):
                continue
            if what == "old" and not out.exists():
                entry.rename(out)  # the interrupted replacement's previous artifact comes back
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def replace_atomically(work: Path, out: Path) -> None:
    """Make the finished folder ``work`` the artifact ``out`` (renames only; see the module docstring)."""
    with file_lock(out.parent):
        aside = None
        if out.exists():
            aside = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, aside)
        try:
            os.rename(work, out)
        except BaseException:
            if aside is not None:
                os.rename(aside, out)
            raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
