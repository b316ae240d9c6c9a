"""``crossrank score-dataset``: score a large set of (query, document) pairs on a Ray cluster with
Ray Data, Parquet out, resumable.

The input (JSONL ``{"id"?, "query", "document"}`` lines, or a Parquet file with those columns) is
cut into blocks of ``block_rows`` consecutive rows. Ray Data runs ``map_batches`` over the block
descriptions with a stateful class (``ScoreBlocks``): an actor pool, each actor building one
``Reranker`` once and then, per block, reading its rows from the input (a path every node sees, as
for artifacts), scoring them (``Reranker.score`` sorts them by token length, so each model call
holds pairs of similar length: little padding), and writing ``part-NNNNNN.parquet`` (columns ``row``, ``id``,
``score``) atomically: written aside under a dot-name, then renamed. A re-run of the same job
skips the blocks already written, so a job stopped half-way resumes where it stopped; a job file
(``_crossrank_score_dataset.json``: input sha256, reranker manifest sha256, window, block size)
makes sure the parts in a folder all come from one job. Blocks are fixed row ranges, not Ray's own
blocks, so they are the same on every run. ``pyarrow.parquet.read_table(output)`` reads the whole
result (files starting with ``_`` or ``.`` are skipped by pyarrow).

A score is a function of the pair and the model only, so the scores equal ``Reranker.score`` on
the same pairs (fp32: bit for bit), whatever the blocks, actors or batch mates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossrank.artifact import load_artifact, sha256_file
from crossrank.errors import (InvalidArgumentError, MissingFileError, OutputExistsError, check_bool, check_choice,
                              check_int)
from crossrank.evaluation.datasets import json_line
from crossrank.progress import progress_bar
from crossrank.reranker import Reranker
from crossrank.settings import DEVICES, check_threads

JOB_FILE = "_crossrank_score_dataset.json"
JOB_FORMAT = 1
PART_NAME = "part-{:06d}.parquet"
TMP_PREFIX = ".part-"                 # blocks being written: .part-NNNNNN.parquet.<random>.tmp
DEFAULT_BLOCK_ROWS = 10_000
FORMATS = (".jsonl", ".parquet")
JOB_IDENTITY = ("input_sha256", "rows", "block_rows", "format", "fields", "id_type", "reranker_manifest_sha256",
                "max_length", "raw_scores", "long_documents")


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of the input; for JSONL also their bytes [offset, end)."""

    index: int
    start: int
    stop: int
    offset: int = 0
    end: int = 0


@dataclass
class ScoreReport:
    output: Path
    rows: int
    blocks: int
    skipped_blocks: int           # already written by an earlier run of the same job
    written_blocks: int
    scored_rows: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.scored_rows / self.seconds if self.seconds > 0 else 0.0


# -- reading the input ----------------------------------------------------------------------------

def _check_pair(row, where: str, fields: dict, id_required: bool):
    if not isinstance(row, dict):
        raise InvalidArgumentError(f"{where}: expected an object with \"{fields['query']}\" and "
                                   f"\"{fields['document']}\", got {type(row).__name__}")
    for key in (fields["query"], fields["document"]):
        if not isinstance(row.get(key), str):
            raise InvalidArgumentError(f"{where}: \"{key}\" must be a string, got {row.get(key)!r:.60}")
    if id_required:
        value = row.get(fields["id"])
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InvalidArgumentError(f"{where}: \"{fields['id']}\" must be a string or an integer in every row "
                                       f"(the first row has one), got {value!r:.60}")


def scan_jsonl(path: Path, block_rows: int, fields: dict) -> tuple[list[Block], int, str, str]:
    """Blocks, rows, the file's sha256 and the id type ("row": none given, "int" or "string"), with
    every line checked (a bad line is an error naming file:line before any work starts)."""
    blocks, digest = [], hashlib.sha256()
    rows, offset, block_start_row, block_offset = 0, 0, 0, 0
    id_required, id_types = None, set()
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            digest.update(line)
            start = offset
            offset += len(line)
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = json_line(line, where, f"\"{fields['query']}\" and \"{fields['document']}\"")
            if id_required is None:
                id_required = isinstance(row, dict) and fields["id"] in row
            _check_pair(row, where, fields, id_required)
            if id_required:
                id_types.add(type(row[fields["id"]]))
            if rows == block_start_row:
                block_offset = start
            rows += 1
            if rows - block_start_row == block_rows:
                blocks.append(Block(len(blocks), block_start_row, rows, block_offset, offset))
                block_start_row = rows
    if rows > block_start_row:
        blocks.append(Block(len(blocks), block_start_row, rows, block_offset, offset))
    id_type = "row" if not id_required else ("int" if id_types == {int} else "string")
    return blocks, rows, digest.hexdigest(), id_type


def scan_parquet(path: Path, block_rows: int, fields: dict) -> tuple[list[Block], int, str, str]:
    schema = pq.read_schema(path)
    for key in ("query", "document"):
        name = fields[key]
        if name not in schema.names or not (pa.types.is_string(schema.field(name).type)
                                            or pa.types.is_large_string(schema.field(name).type)):
            raise InvalidArgumentError(f"{path}: needs a string column {name!r} (--{key}-field), has "
                                       f"{[f'{f.name}: {f.type}' for f in schema]}")
    rows = pq.ParquetFile(path).metadata.num_rows
    blocks = [Block(i, start, min(start + block_rows, rows)) for i, start in enumerate(range(0, rows, block_rows))]
    return blocks, rows, sha256_file(path), "column" if fields["id"] in schema.names else "row"


def _parquet_rows(path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    handle = pq.ParquetFile(path)
    groups, first, seen = [], None, 0
    for g in range(handle.metadata.num_row_groups):
        n = handle.metadata.row_group(g).num_rows
        if seen + n > start and seen < stop:
            groups.append(g)
            first = seen if first is None else first
        seen += n
    table = handle.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)


def read_block(job: dict, block: Block) -> tuple[pa.Array, list[str], list[str]]:
    """(ids, queries, documents) of one block."""
    fields = job["fields"]
    if job["format"] == ".parquet":
        columns = [fields["query"], fields["document"]] + ([fields["id"]] if job["id_type"] == "column" else [])
        table = _parquet_rows(job["input"], block.start, block.stop, columns)
        ids = table.column(fields["id"]).combine_chunks() if job["id_type"] == "column" else None
        queries, documents = table.column(fields["query"]).to_pylist(), table.column(fields["document"]).to_pylist()
        for i, (q, d) in enumerate(zip(queries, documents)):
            if q is None or d is None:
                raise InvalidArgumentError(f"{job['input']}: row {block.start + i} has a null "
                                           f"{fields['query'] if q is None else fields['document']!r}")
    else:
        with open(job["input"], "rb") as handle:
            handle.seek(block.offset)
            lines = [line for line in handle.read(block.end - block.offset).splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        queries = [r[fields["query"]] for r in records]
        documents = [r[fields["document"]] for r in records]
        ids = None
        if job["id_type"] == "int":
            ids = pa.array([r[fields["id"]] for r in records], type=pa.int64())
        elif job["id_type"] == "string":
            ids = pa.array([str(r[fields["id"]]) for r in records], type=pa.string())
    if len(queries) != block.stop - block.start:
        raise InvalidArgumentError(f"{job['input']}: block {block.index} has {len(queries)} rows, expected "
                                   f"{block.stop - block.start}: the input changed while it was being scored")
    if ids is None:
        ids = pa.array(np.arange(block.start, block.stop, dtype=np.int64))
    return ids, queries, documents


# -- scoring (inside Ray Data's actors) ------------------------------------------------------------

def part_path(output: str | Path, index: int) -> Path:
    return Path(output) / PART_NAME.format(index)


def write_atomically(table: pa.Table, path: Path) -> None:
    """Write aside under a dot-name in the same folder, then rename: a reader (or a re-run) sees the
    whole part or none of it."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name[len('part-'):]}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def score_block(reranker: Reranker, job: dict, block: Block) -> int:
    """Score one block's pairs (the Reranker sorts them by token length into its batches) and
    write its part; returns its rows."""
    ids, queries, documents = read_block(job, block)
    scores = reranker.score(list(zip(queries, documents)), raw_scores=job["raw_scores"])
    table = pa.table({"row": pa.array(np.arange(block.start, block.stop, dtype=np.int64)), "id": ids,
                      "score": pa.array(scores)})
    write_atomically(table, part_path(job["output"], block.index))
    return len(scores)


class ScoreBlocks:
    """Ray Data's stateful ``map_batches`` class: one Reranker per actor, built once."""

    def __init__(self, job: dict):
        self.job = job
        self.reranker = Reranker(job["reranker"], device=job["device"], threads=job["threads"],
                                 max_length=job["max_length"], batch_tokens=job["batch_tokens"],
                                 long_documents=job["long_documents"])

    def __call__(self, batch: dict) -> dict:
        names = [f.name for f in dataclasses.fields(Block)]
        done_rows, seconds = [], []
        for values in zip(*(batch[name] for name in names)):
            started = time.perf_counter()
            done_rows.append(score_block(self.reranker, self.job, Block(*(int(v) for v in values))))
            seconds.append(time.perf_counter() - started)
        return {"block": np.asarray(batch["index"], dtype=np.int64), "rows": np.asarray(done_rows, dtype=np.int64),
                "seconds": np.asarray(seconds, dtype=np.float64)}


# -- the job ------------------------------------------------------------------------------------

def _prepare_output(output: Path, job: dict) -> None:
    """Create the folder, or check it holds parts of this same job; remove our own stale temp parts."""
    job_file = output / JOB_FILE
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"output {str(output)!r} exists and is not a folder")
    if job_file.is_file():
        before = json.loads(job_file.read_text())
        changed = [key for key in JOB_IDENTITY if before.get(key) != job.get(key)]
        if changed:
            raise OutputExistsError(f"output {str(output)!r} holds scores of another job ({', '.join(changed)} "
                                    f"changed): pass a new --output, or delete that folder to score again")
    elif output.is_dir() and any(output.iterdir()):
        raise OutputExistsError(f"output {str(output)!r} is a folder that crossrank score-dataset did not create "
                                f"(no {JOB_FILE}): pass a new or empty folder")
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(f"{TMP_PREFIX}*.tmp"):  # a run stopped while writing: ours, never read
        stale.unlink()
    if not job_file.is_file():
        tmp = output / f".{JOB_FILE}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({key: job[key] for key in ("format_version", "input", "output", "reranker",
                                                              *JOB_IDENTITY)}, indent=2) + "\n")
        os.replace(tmp, job_file)


def _written(output: Path, block: Block) -> bool:
    path = part_path(output, block.index)
    if not path.is_file():
        return False
    rows = pq.ParquetFile(path).metadata.num_rows
    if rows != block.stop - block.start:
        raise OutputExistsError(f"{path} has {rows} rows, block {block.index} should have {block.stop - block.start}: "
                                f"it was not written by this job; delete it to score the block again")
    return True


def score_dataset(reranker: str | Path, input: str | Path, output: str | Path, *, address: str | None = None,
                  concurrency: int | None = None, threads: int = 1, device: str = "cpu",
                  block_rows: int = DEFAULT_BLOCK_ROWS, max_length: int | None = None, batch_tokens: int | None = None,
                  long_documents: str = "truncate", raw_scores: bool = False, id_field: str = "id",
                  query_field: str = "query", document_field: str = "document", progress: bool = True) -> ScoreReport:
    """Score every (query, document) pair of ``input`` (.jsonl or .parquet) with the reranker
    artifact on Ray and write Parquet parts under ``output`` (see the module docstring).

    address: the Ray cluster to use when this process has not joined one yet ("auto": the one
    ``ray start`` runs; None: start a local one, stopped at the end). concurrency: actors (default:
    the cluster's CPUs // threads, or its GPUs for device "cuda"); threads: intra-op threads per
    actor (the CPUs each reserves). block_rows: rows per block, the unit of progress, writing and
    resuming. max_length, batch_tokens, long_documents, raw_scores: as for ``Reranker``. ids: the
    ``id_field`` of each row (JSONL: in every row or none; Parquet: the column), else the row
    number. Returns what was done; blocks already written by this job are skipped.
    """
    reranker, input, output = Path(reranker), Path(input), Path(output)
    check_threads(threads, allow_none=False)
    check_int(block_rows, "block_rows", 1)
    check_int(concurrency, "concurrency", 1, allow_none=True)
    check_choice(device, "device", DEVICES)
    check_bool(raw_scores, "raw_scores")
    if input.suffix not in FORMATS:
        raise InvalidArgumentError(f"input {str(input)!r} must be a {' or '.join(FORMATS)} file, got "
                                   f"{input.suffix or 'no suffix'!r}")
    if not input.is_file():
        raise MissingFileError(f"input {str(input)!r} does not exist")
    artifact = load_artifact(reranker, expect_kind="cross")  # verified here, and again in every actor
    fields = {"id": id_field, "query": query_field, "document": document_field}
    scan = scan_parquet if input.suffix == ".parquet" else scan_jsonl
    blocks, rows, input_sha256, id_type = scan(input, block_rows, fields)
    job = {"format_version": JOB_FORMAT, "input": str(input.resolve()), "output": str(output.resolve()),
           "reranker": str(reranker.resolve()), "input_sha256": input_sha256, "rows": rows, "block_rows": block_rows,
           "format": input.suffix, "fields": fields, "id_type": id_type,
           "reranker_manifest_sha256": sha256_file(reranker / "manifest.json"),
           "max_length": max_length or artifact.max_length, "raw_scores": raw_scores, "long_documents": long_documents,
           "device": device, "threads": threads, "batch_tokens": batch_tokens}
    _prepare_output(output, job)
    pending = [b for b in blocks if not _written(output, b)]
    started = time.perf_counter()
    report = ScoreReport(output, rows, len(blocks), len(blocks) - len(pending), 0, 0, 0.0)
    if pending:
        _score_on_ray(job, pending, report, address, concurrency, progress, input.name)
    report.seconds = time.perf_counter() - started
    return report


def _score_on_ray(job: dict, pending: list[Block], report: ScoreReport, address: str | None,
                  concurrency: int | None, progress: bool, name: str) -> None:
    """Score the pending blocks on a pool of actors (see ``score_dataset``), counting into ``report``."""
    import ray  # here, so that reading this module (e.g. for the CLI's --help) does not start Ray's imports

    device, threads, rows = job["device"], job["threads"], report.rows
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    saved_bars = context.enable_progress_bars
    context.enable_progress_bars = False  # ours below counts pairs
    try:
        resources = ray.cluster_resources()
        if device == "cuda":
            actors, options = concurrency or max(1, int(resources.get("GPU", 0))), {"num_gpus": 1}
        else:
            actors, options = concurrency or max(1, int(resources.get("CPU", 1)) // threads), {"num_cpus": threads}
        items = [dataclasses.asdict(b) for b in pending]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        scored = dataset.map_batches(ScoreBlocks, fn_constructor_kwargs={"job": job}, batch_size=1,
                                     compute=ray.data.ActorPoolStrategy(size=min(actors, len(pending))),
                                     batch_format="numpy", **options)
        with progress_bar(total=rows, initial=rows - sum(b.stop - b.start for b in pending), unit="pair",
                          desc=f"scoring {name}", disable=not progress) as bar:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                done = int(np.sum(batch["rows"]))
                report.written_blocks += len(batch["block"])
                report.scored_rows += done
                bar.update(done)
    finally:
        context.enable_progress_bars = saved_bars
        if started_here:
            ray.shutdown()


__all__ = ["Block", "DEFAULT_BLOCK_ROWS", "JOB_FILE", "ScoreBlocks", "ScoreReport", "part_path", "read_block",
           "scan_jsonl", "scan_parquet", "score_block", "score_dataset"]
