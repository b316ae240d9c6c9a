"""Who may call ``crossrank serve`` and how much (issue 24): API keys, per-key quotas, and the gate
every HTTP request passes before a route sees it.

- **Keys** (``load_api_keys``): ``--api-key-file FILE`` and/or ``CROSSRANK_API_KEYS``, one
  ``name:key`` entry per line (the variable also takes commas), optionally followed by that key's
  quotas (``tokens_per_second=N``, ``max_concurrent=N``). ``name:sha256:HEX`` gives a key by its
  SHA-256 instead of in clear. Only SHA-256 digests are kept; a presented Bearer token is hashed
  and compared in constant time against every digest (``KeyRing.identify``). The key's *name* is
  what the log, /metrics and error messages show; a key itself is never logged, echoed or listed.
- **Quotas** (``Quotas``): per key, a token bucket (real model tokens per second, one second's
  worth of burst; a request is admitted while the bucket is not empty and charged the tokens it
  ran when done) and a cap on requests in flight. Past either: 429 with Retry-After, the message
  naming the quota.
- **The gate** (``Gatekeeper``, an ASGI middleware): while the server drains (SIGTERM) every new
  request gets 503; a Host header outside ``--allowed-hosts`` 400; a missing or unknown key 401
  with ``WWW-Authenticate: Bearer`` on every path but /health (and /metrics unless
  ``--protect-metrics``); a POST body that is not ``application/json`` 415. Each refusal is in the
  API family's error envelope of the path (``protocols.path_family``). It also counts the requests
  in flight (``Drain``), which graceful shutdown waits for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crossrank.errors import MissingFileError, UsageError
from crossrank.front.serve import protocols as p
from crossrank.front.serve.errors import ServeError

log = logging.getLogger("crossrank.serve")

KEYS_ENV = "CROSSRANK_API_KEYS"
MIN_KEY_CHARS = 16
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
KEY_OPTIONS = ("tokens_per_second", "max_concurrent")
OPEN_PATHS = ("/health",)
BODY_METHODS = ("POST", "PUT", "PATCH")
REALM = 'Bearer realm="crossrank"'


# -- keys ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApiKey:
    """One key: its name (shown in logs and /metrics), the SHA-256 of its secret, its own quotas
    (None: the server's ``--key-tokens-per-second`` / ``--key-max-concurrent``)."""

    name: str
    digest: bytes
    tokens_per_second: int | None = None
    max_concurrent: int | None = None

    def __repr__(self) -> str:  # never the digest
        return f"ApiKey({self.name!r})"


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def _parse_entry(entry: str, where: str) -> ApiKey:
    first, *options = entry.split()
    name, sep, secret = first.partition(":")
    if not sep or not KEY_NAME.match(name):
        raise UsageError(f"{where}: expected name:key (a name of letters, digits, '_', '.', '@' or '-', then "
                         f"':' and the key), got an entry starting {first[:1]!r}")
    if secret.startswith("sha256:"):
        hexdigest = secret[len("sha256:"):]
        if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
            raise UsageError(f"{where}: key {name!r} is given as sha256: but not as 64 hex digits")
        digest = bytes.fromhex(hexdigest)
    elif len(secret) < MIN_KEY_CHARS:
        raise UsageError(f"{where}: key {name!r} has {len(secret)} characters; use at least {MIN_KEY_CHARS} random "
                         f"ones (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    else:
        digest = key_digest(secret)
    quotas = {}
    for option in options:
        option_name, _, value = option.partition("=")
        if option_name not in KEY_OPTIONS or not value.isdigit() or int(value) < 1:
            raise UsageError(f"{where}: key {name!r}: {option_name[:40]!r} is not a quota; expected "
                             f"{' or '.join(o + '=N' for o in KEY_OPTIONS)} (N a positive integer)")
        quotas[option_name] = int(value)
    return ApiKey(name, digest, **quotas)


def parse_keys(text: str, where: str, separators: str = "\n") -> list[ApiKey]:
    """The keys of a key file's text (or of ``CROSSRANK_API_KEYS``: ``separators`` "\\n,");
    blank entries and ``#`` comments are skipped. Errors name the line, never the key."""
    keys = []
    for number, entry in enumerate(re.split(f"[{re.escape(separators)}]", text), 1):
        entry = entry.strip()
        if entry and not entry.startswith("#"):
            keys.append(_parse_entry(entry, f"{where} entry {number}"))
    return keys


class KeyRing:
    """The keys a server accepts (empty: no credentials asked)."""

    def __init__(self, keys: list[ApiKey] = ()):
        names, digests = set(), set()
        for key in keys:
            if key.name in names:
                raise UsageError(f"two API keys are named {key.name!r}: each name must be unique (logs and /metrics "
                                 f"show it)")
            if key.digest in digests:
                raise UsageError(f"API key {key.name!r} is the same key as another one: give each client its own")
            names.add(key.name)
            digests.add(key.digest)
        self.keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def names(self) -> list[str]:
        return [key.name for key in self.keys]

    def identify(self, presented: str) -> ApiKey | None:
        """The key whose secret is ``presented``, or None. The token is hashed, then compared with
        every stored digest in constant time (no early exit), so the time taken says nothing about
        which key, or how much of one, matched."""
        digest = key_digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def load_api_keys(path: str | None, environ: dict | None = None) -> KeyRing:
    """The keys of ``--api-key-file`` and of ``CROSSRANK_API_KEYS`` (both may be given). Warns when
    the file can be read by other users."""
    environ = os.environ if environ is None else environ
    keys = []
    if path:
        file = Path(path)
        if not file.is_file():
            raise MissingFileError(f"--api-key-file {path!r} is not a file")
        keys += parse_keys(file.read_text(encoding="utf-8"), f"--api-key-file {path!r}")
        if file.stat().st_mode & 0o077:
            log.warning("--api-key-file %s can be read by other users: chmod 600 it", path)
        if not keys:
            raise UsageError(f"--api-key-file {path!r} holds no key (lines name:key)")
    if environ.get(KEYS_ENV, "").strip():
        keys += parse_keys(environ[KEYS_ENV], KEYS_ENV, separators="\n,")
    return KeyRing(keys)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (as the Cohere and OpenAI SDKs send it)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


# -- quotas -------------------------------------------------------------------------------------------

class QuotaExceeded(ServeError):
    """A key is over one of its quotas: 429 with Retry-After."""

    status = 429

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


class _Usage:
    """One key's bucket (tokens it may still start on; below 0: in debt) and requests in flight."""

    def __init__(self, level: float, now: float):
        self.level, self.updated, self.in_flight = level, now, 0


class Lease:
    """One admitted request of a key: ``release(tokens)`` when it ends (charges the tokens it ran)."""

    def __init__(self, quotas: "Quotas", key: ApiKey, usage: _Usage):
        self.quotas, self.key, self.usage = quotas, key, usage

    def release(self, tokens: int) -> None:
        self.usage.in_flight -= 1
        self.usage.level -= tokens
        self.quotas.metrics.key_tokens.labels(self.key.name).inc(tokens)


class Quotas:
    """Per-key quotas; every call runs on the event loop (no lock). ``tokens_per_second`` and
    ``max_concurrent`` are the server's defaults, a key's own values win; None: unlimited."""

    def __init__(self, tokens_per_second: int | None, max_concurrent: int | None, metrics,
                 clock: Callable[[], float] = time.monotonic):
        self.tokens_per_second, self.max_concurrent = tokens_per_second, max_concurrent
        self.metrics, self.clock = metrics, clock
        self.usage: dict[str, _Usage] = {}

    def limits(self, key: ApiKey) -> tuple[int | None, int | None]:
        return (key.tokens_per_second or self.tokens_per_second, key.max_concurrent or self.max_concurrent)

    def admit(self, key: ApiKey | None) -> Lease | None:
        """A lease for one request of ``key`` (None without a key), or QuotaExceeded."""
        if key is None:
            return None
        rate, most = self.limits(key)
        now = self.clock()
        usage = self.usage.get(key.name)
        if usage is None:
            usage = self.usage[key.name] = _Usage(rate or 0, now)
        if rate:
            usage.level = min(rate, usage.level + (now - usage.updated) * rate)  # a bucket of one second
        usage.updated = now
        if most is not None and usage.in_flight >= most:
            self._refused(key, "max_concurrent")
            raise QuotaExceeded(f"key {key.name!r} has {usage.in_flight} requests in flight, its max_concurrent "
                                f"quota ({most}; crossrank serve --key-max-concurrent or the key file); retry when "
                                f"one has its answer", 1)
        if rate and usage.level <= 0:
            self._refused(key, "tokens_per_second")
            wait = (1 - usage.level) / rate
            raise QuotaExceeded(f"key {key.name!r} is over its tokens_per_second quota ({rate} tokens per second; "
                                f"crossrank serve --key-tokens-per-second or the key file): retry after "
                                f"{max(1, math.ceil(wait))} s", wait)
        usage.in_flight += 1
        return Lease(self, key, usage)

    def _refused(self, key: ApiKey, quota: str) -> None:
        self.metrics.key_refused.labels(key.name, quota).inc()


# -- the gate -----------------------------------------------------------------------------------------

class Drain:
    """Requests in flight, and whether the server is draining (SIGTERM: finish them, refuse new ones)."""

    def __init__(self):
        self.in_flight = 0
        self.draining = False


def host_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The Host header's name, lower case, without the port (IPv6 addresses keep their brackets)."""
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            return host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    return ""


def _content_type(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return None


async def send_refusal(send, family: str, status: int, message: str, headers: dict[str, str] | None = None,
                       body: dict | None = None) -> None:
    """An error answer in ``family``'s envelope (or ``body``), straight on the ASGI channel."""
    content = json.dumps(body if body is not None else p.error_body(family, status, message)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


class Gatekeeper:
    """ASGI middleware: drain, Host, credentials and Content-Type checks before any route (see the
    module docstring); the key a request authenticated with is ``request.state.api_key``."""

    def __init__(self, app, keys: KeyRing, metrics, drain: Drain, allowed_hosts: tuple[str, ...] = (),
                 protect_metrics: bool = False):
        self.app, self.keys, self.metrics, self.drain = app, keys, metrics, drain
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.open_paths = set(OPEN_PATHS) | (set() if protect_metrics else {"/metrics"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        refusal = self.refusal(scope)
        if refusal is not None:
            status, message, headers = refusal
            path = scope["path"]
            body = {"status": "draining", "message": message} if path == "/health" and status == 503 else None
            await send_refusal(send, p.path_family(path), status, message, headers, body)
            endpoint = path if path in p.FAMILIES else "other"  # a bounded set of labels, whatever is asked
            self.metrics.requests.labels(endpoint, str(status)).inc()
            key = scope.get("state", {}).get("api_key")
            if key is not None:
                self.metrics.key_requests.labels(key.name, str(status)).inc()
            log.info("%s %s %d %.1f ms refused: %s%s", scope["method"], endpoint, status,
                     (time.perf_counter() - started) * 1e3, message, f" key={key.name}" if key is not None else "")
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1

    def refusal(self, scope) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) of a request refused at the gate, or None; sets the key."""
        headers, path = scope["headers"], scope["path"]
        if self.drain.draining:
            return 503, "the server is shutting down; retry on another replica", {"Retry-After": "1",
                                                                                   "Connection": "close"}
        if self.allowed_hosts and "*" not in self.allowed_hosts:
            host = host_of(headers)
            if host not in self.allowed_hosts:
                return 400, (f"Host {host[:80]!r} is not a name this server answers to (crossrank serve "
                             f"--allowed-hosts)"), {}
        if self.keys and path not in self.open_paths:
            token = bearer_token(headers)
            key = self.keys.identify(token) if token is not None else None
            if key is None:
                if token is None:
                    return 401, "this server needs an API key: send the header Authorization: Bearer KEY", \
                        {"WWW-Authenticate": REALM}
                return 401, "the API key sent is not one this server accepts", \
                    {"WWW-Authenticate": REALM + ', error="invalid_token"'}
            scope.setdefault("state", {})["api_key"] = key
        if scope["method"] in BODY_METHODS and _content_type(headers) != "application/json":
            shown = _content_type(headers)
            return 415, (f"the body must be JSON sent as Content-Type: application/json, got "
                         f"{shown[:60] if shown else 'no Content-Type'}"), {}
        return None


def request_key(request) -> ApiKey | None:
    """The key a request authenticated with (None: the server asks for none)."""
    return request.scope.get("state", {}).get("api_key")


# -- exposure -----------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: KeyRing, allow_unauthenticated: bool) -> None:
    """A server reachable beyond loopback must ask for keys, unless told not to (then it warns)."""
    if keys or is_loopback(host):
        return
    if not allow_unauthenticated:
        raise UsageError(f"--host {host} listens beyond loopback, and no API key is set: anyone who reaches it may "
                         f"use the models and read the index. Give keys (--api-key-file FILE or {KEYS_ENV}), or "
                         f"--allow-unauthenticated when something in front (a proxy, a private network) checks "
                         f"callers")
    log.warning("listening on %s without API keys (--allow-unauthenticated): every caller that reaches it is served",
                host)


__all__ = ["ApiKey", "Drain", "Gatekeeper", "KEYS_ENV", "KeyRing", "Lease", "QuotaExceeded", "Quotas", "bearer_token",
           "check_exposure", "is_loopback", "key_digest", "load_api_keys", "parse_keys", "request_key"]
