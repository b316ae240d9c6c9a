"""argparse value types and shared arguments: a bad value becomes an argparse error naming the flag.

One type per kind of number, used by every command.
"""

from __future__ import annotations

import argparse
from typing import Callable


def number_arg(convert: Callable[[str], float], accept: Callable[[float], bool],
               not_a_number: str, out_of_range: str) -> Callable[[str], float]:
    """An argparse ``type``: ``convert(text)``, then ``accept(value)``. The messages are format
    strings that may use ``{text}`` (the argument as typed, quoted) and ``{value}``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number.format(text=repr(text))) from None
        if not accept(value):
            raise argparse.ArgumentTypeError(out_of_range.format(text=repr(text), value=value))
        return value

    return parse


positive_int_arg = number_arg(int, lambda v: v >= 1, "expected a positive integer, got {text}",
                              "expected a positive integer, got {value}")
count_arg = number_arg(int, lambda v: v >= 0, "expected an integer >= 0 (0 = all), got {text}",
                       "expected an integer >= 0 (0 = all), got {value}")
positive_float_arg = number_arg(float, lambda v: 0 < v < float("inf"), "expected a number of milliseconds, got {text}",
                                "expected a positive finite number, got {text}")
milliseconds_arg = number_arg(float, lambda v: 0 <= v < float("inf"),
                              "expected milliseconds (a number >= 0), got {text}",
                              "expected milliseconds (a number >= 0), got {text}")


def int_list_arg(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. "1024,2048"; returned sorted, without repeats."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted(set(values))


def int_list_arg_in_order(text: str) -> list[int]:
    """Comma-separated positive integers kept in the order given, e.g. "100,20"."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def add_device_argument(p, what: str = "execution provider") -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help=f"{what} (default cpu)")


def add_workload_arguments(p, default_queries: int, what: str) -> None:
    """--workload / --bundled, --queries and --device (bench and tune)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workload", metavar="FILE.jsonl",
                       help='your requests: JSONL of {"query": ..., "documents": [...]} per line (.gz ok)')
    group.add_argument("--bundled", action="store_true",
                       help="the bundled TREC RAG 2024 workload: 301 queries x 20 MS MARCO passages "
                            "(`make data` fetches it; the default)")
    p.add_argument("--queries", type=count_arg, default=default_queries, metavar="N",
                   help=f"requests of the workload {what}, evenly spread (default {default_queries}; 0 = all)")
    add_device_argument(p)
