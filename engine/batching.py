"""The one batch planner: token-budget batches, length-sorted (throughput) or in input order
(deadlines).

``order="length"``: rows are sorted longest first and cut so that rows x padded length <=
batch_tokens. Sorting is the main lever against padding waste; the first batch is the largest in
memory, so a request that fits its first batch fits all of them.

``order="input"``: consecutive rows in the caller's order (e.g. first-stage rank), each batch
within the same budget, so that stopping early (a deadline) leaves the best candidates scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossrank.errors import check_choice, check_int
from crossrank.settings import MAX_ROWS

ORDERS = ("length", "input")


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int = MAX_ROWS,
                 order: str = "length") -> list[np.ndarray]:
    """Split row indices into batches within the token budget (rows x longest row), at most
    ``max_rows`` rows each, by ``order`` ("length" or "input", see the module docstring).

    Returns index arrays into ``lengths``; every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    check_int(batch_tokens, "batch_tokens")
    check_int(max_rows, "max_rows")
    if check_choice(order, "order", ORDERS) == "input":
        return _consecutive_batches(lengths, batch_tokens, max_rows)
    longest_first = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(longest_first):
        longest = max(int(lengths[longest_first[start]]), 1)
        rows = max(1, min(max_rows, batch_tokens // longest))
        batches.append(longest_first[start:start + rows])
        start += rows
    return batches


def _consecutive_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int) -> list[np.ndarray]:
    batches, start, width = [], 0, 0
    for i, length in enumerate(lengths.tolist()):
        wider = max(width, length)
        if i > start and (wider * (i - start + 1) > batch_tokens or i - start >= max_rows):
            batches.append(np.arange(start, i))
            start, wider = i, length
        width = wider
    if start < len(lengths):
        batches.append(np.arange(start, len(lengths)))
    return batches


def batch_cost(lengths: np.ndarray, batch: np.ndarray) -> int:
    """Tokens a batch computes: rows x its longest row (padding included)."""
    return len(batch) * int(lengths[batch].max()) if len(batch) else 0


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the computed tokens that are padding (0 = none wasted)."""
    lengths = np.asarray(lengths)
    real = int(lengths.sum())
    computed = sum(batch_cost(lengths, b) for b in batches)
    return 1.0 - real / computed if computed else 0.0


@dataclass
class Batch:
    """One padded model call: ``rows`` are the positions of its rows in the caller's row list."""

    rows: np.ndarray
    input_ids: np.ndarray       # int64 [batch, length]
    attention_mask: np.ndarray  # int64 [batch, length]
    token_type_ids: np.ndarray  # int64 [batch, length]


def assemble_batch(rows: np.ndarray, ids: list[np.ndarray], types: list[np.ndarray], pad_id: int) -> Batch:
    width = max(len(ids[r]) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(ids[r])
        input_ids[i, :n] = ids[r]
        attention_mask[i, :n] = 1
        token_type_ids[i, :n] = types[r]
    return Batch(rows, input_ids, attention_mask, token_type_ids)
