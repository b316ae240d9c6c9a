"""The one error family and the one set of input checks.

Every error crossrank raises on purpose is a ``CrossrankError``, so a service can catch them all
in one place. Each class also derives from the built-in exception its kind of failure has always
raised (ValueError, TypeError, KeyError, ...), so ``except ValueError`` keeps working.

The ``check_*`` functions are the one rule per kind of input; every public entry point calls them,
so the same bad value gets the same error (class and wording) everywhere. Each names the argument,
the bad value and what would be accepted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np


class CrossrankError(Exception):
    """Base of every error crossrank raises on purpose."""


class InvalidArgumentError(CrossrankError, ValueError):
    """An argument has a value crossrank cannot use; the message names it and what is accepted."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (also a TypeError)."""


class ArtifactError(CrossrankError, ValueError):
    """An artifact folder is missing, malformed, or does not match its manifest."""


class RuntimeConfigError(CrossrankError, ValueError):
    """``runtime.json`` is malformed: the message names the file and the bad key or value."""


class IndexFormatError(CrossrankError, ValueError):
    """An index folder is missing, truncated, corrupted or not an index; the message names the file."""


class EmbedderMismatchError(CrossrankError, ValueError):
    """The embedder given to an index is not the one that built it (other model or dimension)."""


class UnknownIdError(CrossrankError, KeyError):
    """A document id is not in the index."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class UsageError(CrossrankError, RuntimeError):
    """The call is not possible in the object's current state (e.g. a read-only index)."""


class DeviceUnavailableError(CrossrankError, RuntimeError):
    """The execution provider asked for is not installed (e.g. device="cuda" without onnxruntime-gpu),
    or the CPU lacks what a precision needs (bf16 without AVX-512 BF16 or AMX)."""


class FidelityError(CrossrankError, RuntimeError):
    """A precision or backend without a passing fidelity certificate was refused (see
    crossrank.certificate; ``allow_low_fidelity=True`` runs it anyway)."""


class OverloadedError(CrossrankError, RuntimeError):
    """A shared model's queue is full: the work was refused at once, nothing was queued.
    ``retry_after_s`` estimates when the queue will have room (seconds, >= 1)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenBudgetError(InvalidArgumentError):
    """A call would run more tokens than its ``token_budget``: refused before they ran (the
    message names both figures)."""

    def __init__(self, message: str, tokens: int, budget: int):
        super().__init__(message)
        self.tokens, self.budget = tokens, budget


class MissingFileError(CrossrankError, FileNotFoundError):
    """An input file or folder the caller named does not exist."""


class DatasetNotFound(MissingFileError):
    """A bundled data set is not installed; the message says how to install it."""


class OutputExistsError(CrossrankError, FileExistsError):
    """An output path exists and would be replaced without permission (``--force``)."""


class MissingExtraError(CrossrankError, ImportError):
    """An optional part of crossrank is not installed; the message names the extra that installs it."""


class UnsupportedModelError(CrossrankError, ValueError):
    """A model crossrank cannot export as it is (architecture, head, pooling); the message says
    what is supported."""


class StoreError(CrossrankError, RuntimeError):
    """A vector store (PostgreSQL + pgvector, Milvus) cannot be reached or refused an operation; the
    message names the store with its credentials masked."""


class NotOwnedError(StoreError):
    """A table or collection exists that crossrank did not create: crossrank never writes to it
    (open it read-only, or pick another name)."""


# -- checks --------------------------------------------------------------------------------------

def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def int_range_text(low: int | None, high: int | None) -> str:
    """How the integers in [low, high] are named in messages ("a positive integer", ...)."""
    if low is not None and high is not None:
        return f"an integer in [{low}, {high}]"
    if low == 1:
        return "a positive integer"
    return "an integer" + (f" >= {low}" if low is not None else "")


def check_int(value, name: str, low: int | None = 1, high: int | None = None, allow_none: bool = False):
    """An integer (Python or numpy, never bool or float) within [low, high]; returns a Python int."""
    if value is None and allow_none:
        return None
    accepted = int_range_text(low, high)
    if allow_none:
        accepted += " or None"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be {accepted}, got {_show(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidArgumentError(f"{name} must be {accepted}, got {value}")
    return value


def check_number(value, name: str, low: float = 0.0, allow_none: bool = False, finite: bool = True):
    """A real number >= low (finite unless ``finite=False``; never nan); returns a float."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number >= {low:g}{' or None' if allow_none else ''}, "
                                f"got {_show(value)}")
    try:
        number = float(value)  # an integer too large for a float: OverflowError
    except OverflowError:
        number = math.nan
    if not (number >= low and (math.isfinite(number) or not finite)):
        raise InvalidArgumentError(f"{name} must be a {'finite ' if finite else ''}number >= {low:g}, "
                                   f"got {value!r:.60}")
    return number


def check_bool(value, name: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False{' or None' if allow_none else ''}, "
                                f"got {_show(value)}")
    return bool(value)


def check_choice(value, name: str, choices: Sequence):
    if not any(value is choice or (type(value) is type(choice) and value == choice) for choice in choices):
        raise InvalidArgumentError(f"{name} {value!r:.60} is not one of {tuple(choices)}")
    return value


def _check_encodable(text: str, name: str) -> None:
    """Text the Rust tokenizer can take: valid Unicode (no lone surrogates)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidArgumentError(
            f"{name} is not valid Unicode: a lone surrogate {text[err.start]!r} at character {err.start} "
            f"(decode your bytes with errors='replace' or drop it)") from None


def check_text(value, name: str) -> str:
    """A str (may be empty) that the tokenizer can take."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {_show(value)}")
    _check_encodable(value, name)
    return value


def check_query(value, name: str = "query") -> str:
    """A non-empty, non-blank str: the text documents are ranked (or searched) against."""
    check_text(value, name)
    if not value.strip():
        raise InvalidArgumentError(f"{name} is empty; give the text to rank documents against")
    return value


def check_texts(values, name: str = "documents") -> list[str]:
    """A list (or other sequence, not a str) of str; returns a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"{name} must be a list of str, got {type(values).__name__}")
    for i, value in enumerate(values):
        check_text(value, f"{name}[{i}]")
    return list(values)


def check_queries(values, name: str = "queries") -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"{name} must be a list of str, got {type(values).__name__}")
    return [check_query(value, f"{name}[{i}]") for i, value in enumerate(values)]


def check_top_n(top_n, name: str = "top_n"):
    """A positive int, or None for all."""
    return check_int(top_n, name, low=1, allow_none=True)


def check_deadline_ms(deadline_ms, name: str = "deadline_ms"):
    """Milliseconds >= 0 (inf: no limit), or None for no deadline."""
    return check_number(deadline_ms, name, low=0.0, allow_none=True, finite=False)


def check_token_budget(tokens: int, budget: int | None, what: str) -> None:
    """TokenBudgetError when ``tokens`` (of ``what``) exceed ``budget`` (None: no budget)."""
    if budget is not None and tokens > budget:
        raise TokenBudgetError(f"{what} holds {tokens} tokens, more than its token budget ({budget})", tokens, budget)


def check_id(value, name: str):
    """A document id: a str (valid Unicode) or an integer that fits int64 (numpy integers are the int
    they are)."""
    if isinstance(value, str):
        _check_encodable(value, name)
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be a str or an int, got {_show(value)}")
    value = int(value)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise InvalidArgumentError(f"{name} {value} does not fit a signed 64-bit integer")
    return value


def check_ids(values, name: str = "ids") -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ArgumentTypeError(f"{name} must be a list of str or int, got {type(values).__name__}")
    return [check_id(value, f"{name}[{i}]") for i, value in enumerate(values)]


# -- file formats (manifests): a schema of fields, each with a check that names the problem ---------

def check_fields(document, where: str, fields: dict, required, error: type[CrossrankError], section: str = "") -> dict:
    """The one schema checker of crossrank's JSON files (artifact manifest, index manifest,
    runtime.json): validate a parsed JSON object against ``fields`` (key -> check, a function
    returning a problem or None); ``required`` keys must be present; unknown keys are refused.
    Raises ``error`` naming ``where`` (the file) and the key (as ``'section.key'`` inside a section)."""
    if not isinstance(document, dict):
        what = f"{section!r} must be an object of settings" if section else "expected a JSON object"
        raise error(f"{where}: {what}, got {type(document).__name__} {document!r:.60}")

    def name(key: str) -> str:
        return repr(f"{section}.{key}" if section else key)

    unknown = sorted(set(document) - set(fields))
    if unknown:
        raise error(f"{where}: unknown key {name(unknown[0])} (known: {', '.join(sorted(fields))})")
    missing = [key for key in required if key not in document]
    if missing:
        raise error(f"{where}: lacks the key {name(missing[0])}")
    for key, check in fields.items():
        if key in document:
            problem = check(document[key])
            if problem:
                raise error(f"{where}: {name(key)} {problem}")
    return document


def is_int(low: int | None = None, high: int | None = None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) \
                or (high is not None and value > high):
            return f"must be {int_range_text(low, high)}, got {value!r:.60}"
    return check


def is_bool(value) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, got {value!r:.60}"


def is_object(value) -> str | None:
    return None if isinstance(value, dict) else f"must be an object, got {value!r:.60}"


def is_one_of(*choices):
    def check(value):
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            return f"must be one of {choices}, got {value!r:.60}"
    return check


def is_type(*types, optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in types:
            return f"must be {' or '.join(t.__name__ for t in types)}, got {value!r:.60}"
        if not isinstance(value, types):
            return f"must be {' or '.join(t.__name__ for t in types)}{' or null' if optional else ''}, got {value!r:.60}"
    return check


def anything(value):
    return None


def plain_file_name(name) -> str | None:
    """A problem if ``name`` is not a plain file name inside its folder (no path parts)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\0" in name or name.startswith("~"):
        return f"file name {name!r:.80} is not a plain file name inside the folder"
    return None


__all__ = [
    "ArgumentTypeError", "ArtifactError", "CrossrankError", "DatasetNotFound", "DeviceUnavailableError",
    "EmbedderMismatchError", "FidelityError", "IndexFormatError", "InvalidArgumentError", "MissingExtraError",
    "MissingFileError", "NotOwnedError", "OutputExistsError", "OverloadedError", "RuntimeConfigError", "StoreError",
    "TokenBudgetError", "UnknownIdError", "UnsupportedModelError", "UsageError",
    "check_bool", "check_choice", "check_deadline_ms", "check_id", "check_ids", "check_int", "check_number",
    "check_fields", "check_queries", "check_query", "check_text", "check_texts", "check_token_budget", "check_top_n",
    "int_range_text", "is_bool", "is_int", "is_object", "is_one_of", "is_type", "plain_file_name",
]
