"""The request and response shapes of the APIs the server speaks, and their error envelopes.

Pure functions on parsed JSON (no HTTP, no model): each ``parse_*`` takes the request body (a
dict) and returns what the model call needs, or raises ``BadRequest`` naming the field, its
value and what is accepted; each ``*_response`` shapes a result the way that family's clients
parse it. Unknown keys are ignored, as the clients' servers do.

Families: Cohere (``/v1/rerank``, ``/v2/rerank``, and ``/rerank`` with ``documents``; also
crossrank's own ``/v1/search``), TEI (``/rerank`` with ``texts``, ``/embed``), OpenAI
(``/v1/embeddings``, ``/embeddings``, ``/v1/models``).
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from crossrank.errors import (InvalidArgumentError, check_bool, check_choice, check_deadline_ms, check_int, check_query,
                              check_text, check_texts)
from crossrank.front.serve.errors import BadRequest, TooLarge

COHERE, TEI, OPENAI = "cohere", "tei", "openai"
ENCODING_FORMATS = ("float", "base64")
# The family whose envelope answers an error on each path (/rerank: TEI unless its body has
# "documents"; a path not listed: Cohere's plain {"message"}).
FAMILIES = {"/v1/rerank": COHERE, "/v2/rerank": COHERE, "/rerank": TEI, "/v1/embeddings": OPENAI,
            "/embeddings": OPENAI, "/embed": TEI, "/v1/search": COHERE, "/v1/models": OPENAI, "/info": COHERE,
            "/health": COHERE, "/metrics": COHERE, "/openapi.json": COHERE}
# What a request body may hold: JSON nested at most this deep, numbers of at most this many characters
# (an int64 has 19 digits; Python refuses ints past 4,300), deadlines of at most an hour.
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 40
MAX_DEADLINE_MS = 3_600_000


def path_family(path: str) -> str:
    return FAMILIES.get(path, COHERE)


def _field(message: str, name: str):
    return BadRequest(message, 422, name)


def _checked(check, *args, name: str, **kwargs):
    """Run a crossrank.errors check; its InvalidArgumentError (which names the field) becomes a 422."""
    try:
        return check(*args, **kwargs)
    except InvalidArgumentError as err:
        raise _field(str(err), name) from None


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise BadRequest(f"body holds a number of {len(text)} characters ({text[:12]}...): this server reads "
                             f"numbers of at most {MAX_NUMBER_CHARS}")
        value = kind(text)
        if not math.isfinite(value):
            raise BadRequest(f"body holds the number {text}, too large for a float")
        return value
    return parse


def _no_constant(name: str):
    raise BadRequest(f"body holds {name}, which is not JSON (JSON has no NaN or Infinity)")


def _check_depth(value) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"body is JSON nested deeper than this server reads ({MAX_JSON_DEPTH} levels)")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body: 422 when it is not valid JSON or not an object, nests
    deeper than MAX_JSON_DEPTH, holds a number longer than MAX_NUMBER_CHARS or out of a float's
    range, or NaN / Infinity."""
    try:
        body = json.loads(raw, parse_int=_number(int), parse_float=_number(float), parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise BadRequest(f"body is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise BadRequest(f"body is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest(f"body is JSON nested deeper than this server reads ({MAX_JSON_DEPTH} levels)") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__} {json.dumps(body)[:60]}")
    _check_depth(body)
    return body


def parse_model(body: dict) -> str | None:
    """The body's ``model`` (which model answers; None: the server's default for the endpoint)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _field(f"model must be a string, got {type(model).__name__} {model!r:.60}", "model")
    return model


def _limit_count(items: Sequence, name: str, max_items: int) -> None:
    if len(items) > max_items:
        raise TooLarge(f"{name} has {len(items)} items, more than this server accepts per request "
                       f"({max_items}; crossrank serve --max-documents)", name)


def _positive_or_none(body: dict, name: str, low: int = 1):
    return _checked(check_int, body.get(name), name, low, allow_none=True, name=name)


# -- rerank ---------------------------------------------------------------------------------------

@dataclass
class RerankRequest:
    family: str
    query: str
    texts: list[str]
    originals: list[Any]                 # documents as given (str or object), for return_documents
    top_n: int | None = None             # None = all
    return_documents: bool = False
    raw_scores: bool = False
    max_tokens_per_doc: int | None = None
    model: str | None = None
    version: int = 1                     # Cohere API version (1 or 2)
    max_chunks_per_doc: int | None = None  # Cohere v1: best of the first N windows of each document
    return_evidence: bool = False        # crossrank's own: each result's windows (character offsets, scores)
    return_truncation: bool = False      # crossrank's own: each result's truncated / dropped_tokens
    instruction: str | None = None       # crossrank's own: instruct-aware rerankers only (others: 422)


def _extras(body: dict) -> dict:
    """crossrank's own request fields, in every family's rerank body (clients that do not send
    them get the family's plain shapes)."""
    return {name: _checked(check_bool, body.get(name, False), name, name=name)
            for name in ("return_evidence", "return_truncation")}


def _document_text(document, i: int, rank_fields: list[str] | None) -> str:
    name = f"documents[{i}]"
    if isinstance(document, str):
        return _checked(check_text, document, name, name=name)
    if not isinstance(document, dict):
        raise _field(f"{name} must be a string or an object with a \"text\" string, got "
                     f"{type(document).__name__} {json.dumps(document)[:60]}", name)
    if rank_fields:
        missing = [key for key in rank_fields if key not in document]
        if missing:
            raise _field(f"{name} has no {missing[0]!r} key, which rank_fields names (keys: {sorted(document)[:8]})",
                         name)
        parts = [f"{key}: {value if isinstance(value, str) else json.dumps(value)}"
                 for key, value in ((key, document[key]) for key in rank_fields)]
        return _checked(check_text, "\n".join(parts), f"{name} (rank_fields)", name=name)
    if "text" not in document:
        raise _field(f"{name} has no \"text\" key (keys: {sorted(document)[:8]}); give the text to rank, "
                     f"or rank_fields naming the keys to rank by", f"{name}.text")
    return _checked(check_text, document["text"], f"{name}.text", name=f"{name}.text")


def _top_n(body: dict) -> int | None:
    top_n = _checked(check_int, body.get("top_n"), "top_n", 0, allow_none=True, name="top_n")
    return top_n or None  # null or 0: all


def parse_cohere_rerank(body: dict, max_documents: int, version: int) -> RerankRequest:
    """Cohere v1 (also Jina: documents as strings or {"text", ...} objects, rank_fields,
    return_documents, default true) or Cohere v2 (documents as strings only). Both take crossrank's
    ``instruction`` (a string) for instruct-aware rerankers; a model without one answers 422."""
    model = parse_model(body)
    if version == 2 and model is None:
        raise _field("model is required by Cohere's v2 rerank API: send the name GET /v1/models lists", "model")
    query = _checked(check_query, body.get("query"), "query", name="query")
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise _field(f"documents must be a list of {'strings' if version == 2 else 'strings or {text} objects'}, "
                     f"got {type(documents).__name__ if documents is not None else 'nothing'}", "documents")
    _limit_count(documents, "documents", max_documents)
    top_n = _top_n(body)
    max_tokens = _positive_or_none(body, "max_tokens_per_doc")
    instruction = body.get("instruction")
    if instruction is not None:
        _checked(check_query, instruction, "instruction", name="instruction")
    if version == 2:
        texts = [_checked(check_text, d, f"documents[{i}]", name=f"documents[{i}]") for i, d in enumerate(documents)]
        return RerankRequest(COHERE, query, texts, documents, top_n, False, False, max_tokens, model, 2,
                             instruction=instruction, **_extras(body))
    rank_fields = body.get("rank_fields")
    if rank_fields is not None:
        _checked(check_texts, rank_fields, "rank_fields", name="rank_fields")
    return_documents = body.get("return_documents", True)
    _checked(check_bool, return_documents, "return_documents", name="return_documents")
    max_chunks = _positive_or_none(body, "max_chunks_per_doc")
    texts = [_document_text(d, i, rank_fields) for i, d in enumerate(documents)]
    return RerankRequest(COHERE, query, texts, documents, top_n, return_documents, False, max_tokens, model, 1,
                         max_chunks_per_doc=max_chunks, instruction=instruction, **_extras(body))


def parse_tei_rerank(body: dict, max_documents: int) -> RerankRequest:
    """TEI ``/rerank``: {query, texts, raw_scores?, return_text?, truncate?, truncation_direction?}
    (plus ``model``, which TEI itself does not have). Texts are always truncated to the model's
    window (TEI refuses them when truncate is false)."""
    model = parse_model(body)
    query = _checked(check_query, body.get("query"), "query", name="query")
    texts = body.get("texts")
    if not isinstance(texts, list):
        raise _field(f"texts must be a list of strings, got {type(texts).__name__}", "texts")
    _limit_count(texts, "texts", max_documents)
    texts = _checked(check_texts, texts, "texts", name="texts")
    raw = _checked(check_bool, body.get("raw_scores", False), "raw_scores", name="raw_scores")
    return_text = _checked(check_bool, body.get("return_text", False), "return_text", name="return_text")
    if body.get("truncate") is not None:
        _checked(check_bool, body["truncate"], "truncate", name="truncate")
    direction = body.get("truncation_direction")
    if direction is not None and (not isinstance(direction, str) or direction.lower() != "right"):
        raise _field(f"truncation_direction {direction!r:.40} is not supported: crossrank keeps the start of "
                     f"each text (\"Right\")", "truncation_direction")
    return RerankRequest(TEI, query, texts, texts, None, return_text, raw, model=model, **_extras(body))


def _evidence(evidence) -> dict | None:
    if evidence is None:
        return None
    return {"start": evidence.start, "end": evidence.end, "window": evidence.window,
            "windows": [{"start": w.start, "end": w.end, "score": w.score} for w in evidence.windows]}


def _result_extras(request: RerankRequest, result) -> dict:
    """A result's extra fields, when the request asked for them (clients' SDKs ignore them)."""
    extras = {}
    if request.return_truncation:
        extras.update(truncated=result.truncated, dropped_tokens=result.dropped_tokens)
    if request.return_evidence:
        extras["evidence"] = _evidence(result.evidence)
    return extras


def rerank_response(request: RerankRequest, ranked, tokens: int) -> Any:
    """The family's response body for ``Reranker.rerank``'s result (best first)."""
    if request.family == TEI:
        out = []
        for r in ranked:
            item = {"index": r.index, "score": r.score}
            if request.return_documents:
                item["text"] = request.texts[r.index]
            out.append(item | _result_extras(request, r))
        return out
    results = []
    for r in ranked:
        item = {"index": r.index, "relevance_score": r.score}
        if request.return_documents:
            original = request.originals[r.index]
            item["document"] = original if isinstance(original, dict) else {"text": original}
        results.append(item | _result_extras(request, r))
    units = max(1, math.ceil(len(request.texts) / 100))  # Cohere: a search unit = a query and up to 100 documents
    meta = {"api_version": {"version": str(request.version)}, "billed_units": {"search_units": units},
            "tokens": {"input_tokens": tokens, "output_tokens": 0}}
    return {"id": str(uuid.uuid4()), "results": results, "meta": meta}


# -- embeddings -----------------------------------------------------------------------------------

@dataclass
class EmbedRequest:
    family: str
    texts: list[str]
    single: bool                          # TEI: a bare string input
    encoding_format: str = "float"
    model: str | None = None
    dimensions: int | None = None         # OpenAI: the vector size asked for (only the embedder's own)


def parse_openai_embeddings(body: dict, max_documents: int) -> EmbedRequest:
    """OpenAI ``/v1/embeddings``: {input: str | [str], model, encoding_format?, dimensions?, user?}
    (``dimensions`` is checked against the model that answers: ``check_dimensions``)."""
    model = parse_model(body)
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(isinstance(x, (int, list)) for x in raw):
        raise _field("input as token ids is not supported: send the text (a string or a list of strings)", "input")
    elif isinstance(raw, list) and not raw:
        raise _field("input is an empty list; send at least one string", "input")
    elif isinstance(raw, list):
        i = next(i for i, x in enumerate(raw) if not isinstance(x, str))
        raise _field(f"input[{i}] must be a string, got {type(raw[i]).__name__} {raw[i]!r:.60}", f"input[{i}]")
    else:
        raise _field(f"input must be a string or a list of strings, got "
                     f"{type(raw).__name__ if raw is not None else 'nothing'}", "input")
    _limit_count(texts, "input", max_documents)
    texts = _checked(check_texts, texts, "input", name="input")
    encoding = body.get("encoding_format") or "float"
    _checked(check_choice, encoding, "encoding_format", ENCODING_FORMATS, name="encoding_format")
    dimensions = _positive_or_none(body, "dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _field(f"user must be a string, got {type(body['user']).__name__}", "user")
    return EmbedRequest(OPENAI, texts, isinstance(raw, str), encoding, model, dimensions)


def check_dimensions(request: EmbedRequest, dim: int) -> EmbedRequest:
    """The request, if the dimensions it asks for (if any) are the embedder's ``dim``."""
    if request.dimensions is not None and request.dimensions != dim:
        raise _field(f"dimensions {request.dimensions} is not available: this embedder gives {dim} dimensions "
                     f"(omit dimensions or send {dim})", "dimensions")
    return request


def parse_tei_embed(body: dict, max_documents: int) -> EmbedRequest:
    """TEI ``/embed``: {inputs: str | [str], normalize?, truncate?, truncation_direction?} (plus
    ``model``, which TEI itself does not have)."""
    model = parse_model(body)
    raw = body.get("inputs")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        _limit_count(raw, "inputs", max_documents)
        texts = _checked(check_texts, raw, "inputs", name="inputs")
    else:
        raise _field(f"inputs must be a string or a list of strings, got "
                     f"{type(raw).__name__ if raw is not None else 'nothing'}", "inputs")
    if not _checked(check_bool, body.get("normalize", True), "normalize", name="normalize"):
        raise _field("normalize=false is not supported: this embedder's graph returns L2-normalised vectors",
                     "normalize")
    if body.get("truncate") is not None:
        _checked(check_bool, body["truncate"], "truncate", name="truncate")
    return EmbedRequest(TEI, texts, isinstance(raw, str), model=model)


def _base64_floats(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embed_response(request: EmbedRequest, vectors: np.ndarray, tokens: int, model_name: str) -> Any:
    if request.family == TEI:
        return vectors.tolist()
    data = [{"object": "embedding", "index": i,
             "embedding": _base64_floats(v) if request.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- search ---------------------------------------------------------------------------------------

@dataclass
class SearchRequest:
    query: str
    k: int = 100
    top_n: int | None = 10
    deadline_ms: float | None = None
    model: str | None = None             # the rerank model (a reranker or a cascade); None: the default


def parse_search(body: dict, max_documents: int) -> SearchRequest:
    """crossrank ``/v1/search``: {query, model?, k?, top_n?, deadline_ms?} (top_n null or 0: all
    k). k is the number of candidates reranked: at most ``max_documents`` (omitted: 100, or that
    cap if lower); deadline_ms at most an hour."""
    model = parse_model(body)
    query = _checked(check_query, body.get("query"), "query", name="query")
    k = _checked(check_int, body.get("k", min(SearchRequest.k, max_documents)), "k", name="k")
    if k > max_documents:
        raise _field(f"k {k} is more candidates than this server reranks per request ({max_documents}; crossrank "
                     f"serve --max-documents)", "k")
    top_n = _checked(check_int, body.get("top_n", 10), "top_n", 0, allow_none=True, name="top_n") or None
    deadline = _checked(check_deadline_ms, body.get("deadline_ms"), "deadline_ms", name="deadline_ms")
    if deadline is not None and deadline > MAX_DEADLINE_MS:
        raise _field(f"deadline_ms {body['deadline_ms']!r:.40} is more than this server waits ({MAX_DEADLINE_MS} ms); "
                     f"omit it for no deadline", "deadline_ms")
    return SearchRequest(query, k, top_n, deadline, model)


def _finite_or_none(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def search_response(result) -> dict:
    body = result.to_dict()
    for hit in body["hits"]:
        hit["score"] = _finite_or_none(hit["score"])  # under a deadline: unscored (nan) -> null
        hit["similarity"] = _finite_or_none(hit["similarity"])
        hit["stage_scores"] = [_finite_or_none(score) for score in hit["stage_scores"]]
    return body


# -- errors ---------------------------------------------------------------------------------------

TEI_ERROR_TYPES = {400: "Validation", 401: "Unauthorized", 404: "Validation", 405: "Validation", 408: "Validation",
                   413: "Validation", 415: "Validation", 422: "Validation", 429: "Overloaded", 499: "Cancelled",
                   500: "Backend", 503: "Unhealthy"}
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                      405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
                      415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_exceeded",
                      503: "service_unavailable", 500: "server_error"}
OPENAI_ERROR_CODES = {401: "invalid_api_key"}


def error_body(family: str, status: int, message: str, param: str | None = None) -> dict:
    """The error envelope each family's clients read: Cohere ``{message}``, OpenAI
    ``{error: {message, type, param, code}}``, TEI ``{error, error_type}``."""
    if family == OPENAI:
        return {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"),
                          "param": param, "code": OPENAI_ERROR_CODES.get(status)}}
    if family == TEI:
        return {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "Backend")}
    return {"message": message}
