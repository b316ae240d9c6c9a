"""argparse value types and shared arguments: a bad value becomes an argparse error naming the flag.

One type per kind of number, used by every command; integer types are built from the core's
checks and ranges (``crossrank.errors.check_int``, ``crossrank.settings``), so a flag accepts what
the API accepts and says so in the same words. Also: the CROSSRANK_* environment defaults, and the
one way a command says it needs an optional extra (``needs_extra``: the CLI's error exit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Callable, Iterator, Sequence

from crossrank.errors import InvalidArgumentError, MissingExtraError, check_int, int_range_text
from crossrank.settings import BATCH_TOKENS_RANGE, THREADS_RANGE, WORKERS_RANGE

ENV_PREFIX = "CROSSRANK_"


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


def int_arg(low: int | None = 1, high: int | None = None, what: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer that ``check_int(value, name, low, high)`` accepts."""
    accepted = int_range_text(low, high)
    if what is not None:
        accepted = f"{what} ({accepted})"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
        try:
            return check_int(value, "value", low, high)
        except InvalidArgumentError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {value}") from None

    return parse


positive_int_arg = int_arg(1)
count_arg = int_arg(0)  # 0 = all
threads_arg = int_arg(*THREADS_RANGE, what="intra-op threads")
batch_tokens_arg = int_arg(*BATCH_TOKENS_RANGE, what="tokens per model call")
workers_arg = int_arg(*WORKERS_RANGE, what="worker threads")
port_arg = int_arg(0, 65535, what="a TCP port")
positive_float_arg = number_arg(float, lambda v: 0 < v < float("inf"), "expected a number of milliseconds, got {text}",
                                "expected a positive finite number, got {text}")
seconds_arg = number_arg(float, lambda v: 0 < v < float("inf"), "expected seconds (a positive number), got {text}",
                         "expected seconds (a positive finite number), got {text}")
milliseconds_arg = number_arg(float, lambda v: 0 <= v < float("inf"),
                              "expected milliseconds (a number >= 0), got {text}",
                              "expected milliseconds (a number >= 0), got {text}")


def int_list_type(low: int = 1, high: int | None = None, in_order: bool = False) -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated integers, each one ``check_int`` accepts in [low, high];
    sorted without repeats (``in_order``: as given, e.g. cascade depths "100,20")."""
    accepted = int_range_text(low, high).replace("an integer", "integers").replace("a positive integer",
                                                                                   "positive integers")

    def parse(text: str) -> list[int]:
        try:
            values = [check_int(int(part), "value", low, high) for part in text.split(",") if part.strip() or in_order]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {accepted}, got {text!r}")
        return values if in_order else sorted(set(values))

    return parse


int_list_arg = int_list_type()
int_list_arg_in_order = int_list_type(in_order=True)


def choice_list_type(what: str, choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated values, each one of ``choices`` (``what`` names them)."""
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values or any(v not in choices for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} of {', '.join(choices)}, got {text!r}")
        return values
    return parse


def names_arg(text: str) -> list[str]:
    """An argparse ``type``: comma-separated names (empty parts dropped; "" gives none)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def env_default(name: str, default: str | None = None) -> str | None:
    """The environment variable CROSSRANK_<name> (a flag's default; a flag given on the command line wins)."""
    return os.environ.get(ENV_PREFIX + name, default)


def flag_bool(text: str) -> bool:
    """An argparse ``type`` for on/off flags that are also environment variables."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


@contextlib.contextmanager
def needs_extra(extra: str) -> Iterator[None]:
    """Imports inside this block that fail become a MissingExtraError naming the extra to install
    (the CLI prints it as its one-line error and exits 2)."""
    try:
        yield
    except ImportError as err:
        raise MissingExtraError(f"this command needs the {extra!r} extra: pip install 'crossrank[{extra}]' "
                                f"({err})") from err


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
