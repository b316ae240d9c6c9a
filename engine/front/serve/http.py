"""How ``crossrank serve`` runs its app on uvicorn, with limits on every connection (issue 24).

- ``HttpLimits``: the per-connection limits and TLS files (flags of ``crossrank serve``).
- ``guarded_protocol``: uvicorn's HTTP protocol, plus: a connection must complete its request
  headers within ``header_timeout`` seconds of opening (or of its first byte after an answer), else
  it gets 408 and is closed (slowloris, silent connections); past ``max_connections`` open ones, a
  new connection gets 503 and is closed at once, so the server never runs out of file descriptors.
  Idle keep-alive connections close after ``keep_alive_timeout``; the body's own time limit is the
  app's (``--body-timeout``, 408 in the API's envelope).
- ``GracefulServer``: on SIGTERM (or Ctrl-C) the server drains: requests in flight finish, new
  ones get 503 (the listening socket stays open so that a load balancer sees the refusal), and
  once none is left, or ``shutdown_grace`` seconds have passed, it stops and the process exits 0.
- ``build_server(app, host, port, limits)``: raises the open-file limit to its hard limit and
  builds the server on the uvicorn config (TLS included: ``--ssl-certfile``/``--ssl-keyfile``,
  ``--ssl-ca-certs`` to require client certificates).
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import signal
import ssl
import time
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from crossrank.errors import InvalidArgumentError, MissingFileError, check_int, check_number
from crossrank.front.serve.config import (DEFAULT_HEADER_TIMEOUT_S, DEFAULT_KEEP_ALIVE_TIMEOUT_S,
                                          DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_GRACE_S)

log = logging.getLogger("crossrank.serve")

FILES_KEPT = 64        # file descriptors left for the models, logs and the process itself
WARN_EVERY_S = 10.0    # at most one log line per kind of closed connection per this many seconds


def default_max_connections() -> int:
    """Open connections allowed: DEFAULT_MAX_CONNECTIONS, or the open-file limit less what the
    process needs besides, if lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(8, min(DEFAULT_MAX_CONNECTIONS, soft - FILES_KEPT))


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit (what servers commonly do); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class HttpLimits:
    """Limits on connections, shutdown, and TLS (``crossrank serve`` flags of the same names)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    max_connections: int | None = None      # None: default_max_connections() when the server starts
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_S
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None         # client certificates must be signed by these CAs

    def __post_init__(self):
        for name in ("header_timeout", "keep_alive_timeout", "shutdown_grace"):
            if check_number(getattr(self, name), name) == 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds, got 0")
        check_int(self.max_connections, "max_connections", allow_none=True)
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise InvalidArgumentError("--ssl-certfile and --ssl-keyfile go together: give both, or neither")
        if self.ssl_ca_certs is not None and self.ssl_certfile is None:
            raise InvalidArgumentError("--ssl-ca-certs checks client certificates over TLS: give --ssl-certfile and "
                                       "--ssl-keyfile too")
        for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
            path = getattr(self, name)
            if path is not None:
                try:
                    open(path, "rb").close()
                except OSError as err:
                    raise MissingFileError(f"--{name.replace('_', '-')} {path!r} cannot be read: {err.strerror}") \
                        from None

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None


def _raw_answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class _Warnings:
    """At most one log line per kind every WARN_EVERY_S seconds, with the count since the last one."""

    def __init__(self):
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            log.warning("%s (%d since the last such line)", message, self.count[kind])
            self.last[kind], self.count[kind] = now, 0


def guarded_protocol(limits: HttpLimits, metrics=None, base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol class (httptools or h11) with the header timeout and the connection
    cap of ``limits`` (see the module docstring); ``metrics``: counts what it closes, by reason."""
    most = limits.max_connections or default_max_connections()
    warn = _Warnings()
    too_slow = _raw_answer(408, "Request Timeout", f"no complete request headers within {limits.header_timeout:g} s "
                                                   f"(crossrank serve --header-timeout)")
    too_many = _raw_answer(503, "Service Unavailable", f"this server holds its most open connections ({most}; "
                                                       f"crossrank serve --max-connections): retry later")

    def closed(reason: str) -> None:
        if metrics is not None:
            metrics.connections_closed.labels(reason).inc()

    class GuardedProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = None
            if len(self.connections) > most:
                closed("max_connections")
                warn("max_connections", f"refused a connection: {most} open (--max-connections)")
                transport.write(too_many)
                transport.close()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_header_timer()  # the first byte of a new request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not None and not self.cycle.response_complete:
                self._header_timer.cancel()  # the request's headers are complete
                self._header_timer = None

        def connection_lost(self, exc) -> None:
            if getattr(self, "_header_timer", None) is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(limits.header_timeout, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            closed("header_timeout")
            warn("header_timeout", f"closed a connection without complete request headers after "
                                   f"{limits.header_timeout:g} s (--header-timeout)")
            self.transport.write(too_slow)
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining on SIGTERM/SIGINT (see the module docstring); a second signal
    stops waiting for the requests in flight, a third exits at once."""

    def __init__(self, config: uvicorn.Config, drain, grace: float):
        super().__init__(config)
        self.drain, self.grace = drain, grace
        self.drain_deadline: float | None = None
        self.signals = 0

    def handle_exit(self, sig, frame) -> None:
        # Not recorded for re-raising (uvicorn re-raises it after shutdown: exit status 143): a
        # drained shutdown is a normal exit, status 0.
        self.signals += 1
        if self.signals == 1:
            self.drain.draining = True
            self.drain_deadline = time.monotonic() + self.grace
            log.info("%s: draining %d request(s) in flight (at most %g s; crossrank serve --shutdown-grace); new "
                     "requests get 503", signal.Signals(sig).name, self.drain.in_flight, self.grace)
        elif self.signals == 2:
            self.should_exit = True
        else:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self.should_exit:
            if self.drain.in_flight == 0:
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning("shutdown grace over: %d request(s) still in flight are cut", self.drain.in_flight)
                self.should_exit = True
        return await super().on_tick(counter)


def uvicorn_config(app, host: str, port: int, limits: HttpLimits, metrics=None) -> uvicorn.Config:
    """The uvicorn config of ``crossrank serve``: the guarded protocol, keep-alive and shutdown
    limits, TLS when given (client certificates required with ``ssl_ca_certs``)."""
    tls = {}
    if limits.tls:
        tls = {"ssl_certfile": limits.ssl_certfile, "ssl_keyfile": limits.ssl_keyfile}
        if limits.ssl_ca_certs:
            tls.update(ssl_ca_certs=limits.ssl_ca_certs, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits, metrics), log_level="warning",
                          access_log=False, lifespan="on", server_header=False,
                          timeout_keep_alive=limits.keep_alive_timeout,
                          timeout_graceful_shutdown=max(1, int(limits.shutdown_grace)), **tls)


def build_server(app, host: str, port: int, limits: HttpLimits) -> GracefulServer:
    """The server of ``app`` (``server.run()`` serves until SIGTERM/SIGINT and its drain). Raises
    the open-file limit first; ``limits.max_connections`` defaults to what it leaves."""
    files = raise_open_file_limit()
    if limits.max_connections is None:
        limits.max_connections = default_max_connections()
    elif limits.max_connections > files - FILES_KEPT:
        log.warning("--max-connections %d is more than the open-file limit (%d) leaves: the server may run out of "
                    "file descriptors", limits.max_connections, files)
    log.info("listening on %s://%s:%d (at most %d connections; headers within %g s, bodies within %g s)",
             "https" if limits.tls else "http", host, port, limits.max_connections, limits.header_timeout,
             app.state.config.body_timeout)
    return GracefulServer(uvicorn_config(app, host, port, limits, app.state.metrics), app.state.drain,
                          limits.shutdown_grace)


__all__ = ["GracefulServer",
           "HttpLimits", "build_server", "default_max_connections", "guarded_protocol", "raise_open_file_limit",
           "uvicorn_config"]
