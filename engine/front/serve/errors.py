"""The server's own errors, and the one mapping from an exception to an HTTP answer.

Every error the server raises on purpose is a ``ServeError`` (a ``crossrank.CrossrankError``) with
its HTTP ``status`` and, where a field is to blame, ``param``. ``error_reply`` maps any exception a
request ends with to (status, message, param, headers): the server's own by their status, the
core's by their kind (a full queue: 429 with Retry-After; a bad argument: 422), anything else to
500. Each API family then wraps the reply in its own envelope (``protocols.error_body``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from crossrank.errors import CrossrankError, InvalidArgumentError, OverloadedError, TokenBudgetError


class ServeError(CrossrankError):
    """A request the server refuses or cannot serve now; ``status`` is the HTTP status."""

    status = 500
    headers: dict[str, str] = {}   # extra response headers (Retry-After, Connection: close, ...)

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class BadRequest(ServeError, ValueError):
    """A request body the server refuses: ``status`` 422 (or 413), a message naming the field."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message, param)
        self.status = status


class TooLarge(BadRequest):
    """A body past ``--max-request-bytes`` or a list past ``--max-documents`` (413)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, 413, param)


class NotReady(ServeError, RuntimeError):
    """The models are still loading, or failed to load (503)."""

    status = 503


class NotConfigured(ServeError, LookupError):
    """The endpoint needs a model this server was not started with (404)."""

    status = 404


class UnknownModel(ServeError, LookupError):
    """A request names a model this server does not serve (404, naming the ones it does)."""

    status = 404


class ClientGone(ServeError):
    """The client closed the connection before its answer (499: nothing is sent; counted, logged)."""

    status = 499  # nginx's status for a client that closed the connection before the answer


class RequestTimeout(ServeError):
    """The body did not arrive within ``--body-timeout`` (408; the connection is closed)."""

    status = 408
    headers = {"Connection": "close"}


CLIENT_GONE = ClientGone.status


@dataclass(frozen=True)
class ErrorReply:
    status: int
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(err: BaseException) -> ErrorReply:
    """The HTTP answer to a request that ended with ``err`` (the one place errors become statuses)."""
    if isinstance(err, ServeError):
        return ErrorReply(err.status, str(err), err.param, dict(err.headers))
    if isinstance(err, TokenBudgetError):
        return ErrorReply(413, f"{err} (crossrank serve --max-request-tokens)")
    if isinstance(err, OverloadedError):
        return ErrorReply(429, str(err), headers={"Retry-After": str(math.ceil(err.retry_after_s))})
    if isinstance(err, InvalidArgumentError):  # the core's checks name the argument
        return ErrorReply(422, str(err))
    return ErrorReply(500, f"internal error: {type(err).__name__}: {err}")


__all__ = ["BadRequest", "CLIENT_GONE", "ClientGone", "ErrorReply", "NotConfigured", "NotReady", "RequestTimeout",
           "ServeError", "TooLarge", "UnknownModel", "error_reply"]
