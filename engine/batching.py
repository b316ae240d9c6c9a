"""Length-sorted, token-budget batches: the main lever against padding waste.

Rows are sorted longest first and cut so that rows x padded length <= batch_tokens. The first
batch is the largest in memory, so a request that fits its first batch fits all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}  # cpu: measured best of 512..16384 on the TREC pairs
MAX_ROWS = 256


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int = MAX_ROWS) -> list[np.ndarray]:
    """Split row indices into batches of similar length, each within the token budget.

    Returns index arrays into ``lengths``; every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, batch_tokens // longest))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the computed tokens that are padding (0 = none wasted)."""
    lengths = np.asarray(lengths)
    real = int(lengths.sum())
    computed = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
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
