"""argparse value types for numbers: a bad value becomes an argparse error naming the flag."""

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
