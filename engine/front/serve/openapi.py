"""The server's OpenAPI document (``GET /openapi.json``, behind the API keys when there are any).

The routes read their bodies themselves (parsed and checked on a thread, ``protocols.parse_*``),
so FastAPI cannot infer their shapes; ``document_api`` writes them in: each POST's request body,
each operation's answers by status (the 200 body, and every error status in the API family's
envelope), and the Bearer scheme when the server has keys. The document describes what the server
does; tests/test_security.py fuzzes the server against it (schemathesis): no 5xx, no answer
outside it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from crossrank.front.serve import protocols as p
from crossrank.front.serve.protocols import COHERE, OPENAI, TEI

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}


def _object(required: list[str], **properties) -> dict:
    return {"type": "object", "required": required, "properties": properties}


def _array(items: dict, **limits) -> dict:
    return {"type": "array", "items": items, **limits}


ENVELOPES = {
    COHERE: _object(["message"], message=STRING),
    OPENAI: _object(["error"], error=_object(["message", "type"], message=STRING, type=STRING,
                                             param={"type": ["string", "null"]}, code={"type": ["string", "null"]})),
    TEI: _object(["error", "error_type"], error=STRING, error_type=STRING),
}
ERRORS = {400: "Host header not in --allowed-hosts", 401: "no API key, or one the server does not accept",
          404: "a model this server does not serve, or an endpoint it has no model for",
          408: "the body did not arrive within --body-timeout", 413: "more than --max-request-bytes, "
          "--max-documents or --max-request-tokens", 415: "the body is not Content-Type: application/json",
          422: "a field's value is not accepted (the message names it)",
          429: "the model's queue is full (--max-queue-tokens) or the key is over a quota",
          503: "the models are loading, or the server is shutting down"}
GET_ERRORS = (400, 401, 503)

COHERE_RANKING = _object(["id", "results", "meta"], id=STRING, meta=OBJECT, results=_array(
    _object(["index", "relevance_score"], index={"type": "integer", "minimum": 0}, relevance_score=NUMBER,
            document=OBJECT)))
TEI_RANKING = _array(_object(["index", "score"], index={"type": "integer", "minimum": 0}, score=NUMBER, text=STRING))
OPENAI_EMBEDDINGS = _object(["object", "data", "model", "usage"], object=STRING, model=STRING, data=_array(
    _object(["object", "index", "embedding"], object=STRING, index=INTEGER,
            embedding={"anyOf": [_array(NUMBER), STRING]})),
    usage=_object(["prompt_tokens", "total_tokens"], prompt_tokens=INTEGER, total_tokens=INTEGER))
SEARCH_RESULT = _object(["query", "hits", "candidates", "reranked", "timings_ms"], query=STRING, candidates=INTEGER,
                        reranked=BOOLEAN, timings_ms=OBJECT, scored={"type": ["integer", "null"]},
                        hits=_array(_object(["id", "rank", "first_stage_rank"], rank=INTEGER,
                                            first_stage_rank=INTEGER, score={"type": ["number", "null"]},
                                            similarity={"type": ["number", "null"]})))


def _requests(max_documents: int, rerankers: list[str], embedders: list[str]) -> dict:
    """Request body schema of each POST path."""
    def model(names: list[str]) -> dict:
        return {"type": "string", "enum": names} if names else STRING

    documents = {"type": "array", "maxItems": max_documents}
    cohere_v1 = _object(["query", "documents"], model=model(rerankers), query=STRING,
                        documents={**documents, "items": {"anyOf": [STRING, _object(["text"], text=STRING)]}},
                        top_n={"type": ["integer", "null"], "minimum": 0}, return_documents=BOOLEAN,
                        rank_fields=_array(STRING), max_tokens_per_doc={"type": "integer", "minimum": 1},
                        max_chunks_per_doc={"type": "integer", "minimum": 1})
    cohere_v2 = _object(["model", "query", "documents"], model=model(rerankers), query=STRING,
                        documents={**documents, "items": STRING}, top_n={"type": ["integer", "null"], "minimum": 0},
                        max_tokens_per_doc={"type": "integer", "minimum": 1})
    tei_rerank = _object(["query", "texts"], query=STRING, texts={**documents, "items": STRING}, raw_scores=BOOLEAN,
                         return_text=BOOLEAN, truncate={"type": ["boolean", "null"]},
                         truncation_direction={"type": "string", "enum": ["Right", "right"]})
    openai = _object(["input"], model=model(embedders),
                     input={"anyOf": [STRING, {**documents, "items": STRING, "minItems": 1}]},
                     encoding_format={"type": "string", "enum": list(p.ENCODING_FORMATS)}, user=STRING)
    tei_embed = _object(["inputs"], inputs={"anyOf": [STRING, {**documents, "items": STRING}]},
                        normalize={"type": "boolean", "enum": [True]}, truncate={"type": ["boolean", "null"]})
    search = _object(["query"], query=STRING, k={"type": "integer", "minimum": 1, "maximum": max_documents},
                     top_n={"type": ["integer", "null"], "minimum": 0},
                     deadline_ms={"type": ["number", "null"], "minimum": 0, "maximum": p.MAX_DEADLINE_MS})
    return {"/v1/rerank": cohere_v1, "/v2/rerank": cohere_v2, "/rerank": {"anyOf": [tei_rerank, cohere_v1]},
            "/v1/embeddings": openai, "/embeddings": openai, "/embed": tei_embed, "/v1/search": search}


ANSWERS = {"/v1/rerank": COHERE_RANKING, "/v2/rerank": COHERE_RANKING,
           "/rerank": {"anyOf": [TEI_RANKING, COHERE_RANKING]},
           "/v1/embeddings": OPENAI_EMBEDDINGS, "/embeddings": OPENAI_EMBEDDINGS, "/embed": _array(_array(NUMBER)),
           "/v1/search": SEARCH_RESULT, "/health": _object(["status"], status=STRING), "/info": OBJECT,
           "/v1/models": _object(["object", "data"], object=STRING, data=_array(_object(["id", "object"], id=STRING,
                                                                                       object=STRING)))}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(path: str, method: str) -> dict:
    family = p.path_family(path)
    envelope = {"anyOf": [ENVELOPES[TEI], ENVELOPES[COHERE]]} if path == "/rerank" else ENVELOPES[family]
    if path == "/metrics":
        answers = {"200": {"description": "Prometheus metrics",
                           "content": {"text/plain": {"schema": STRING}}}}
    else:
        answers = {"200": _json(ANSWERS.get(path, OBJECT), "the answer")}
    statuses = ERRORS if method == "post" else GET_ERRORS
    for status in statuses:
        schema = envelope
        if path == "/health" and status == 503:
            schema = _object(["status"], status=STRING)
        answers[str(status)] = _json(schema, ERRORS[status])
    return answers


def document_api(app: FastAPI) -> None:
    """Make ``app.openapi()`` (what ``/openapi.json`` serves) the server's documented API."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        config = app.state.config
        schema = get_openapi(title="crossrank", version=app.version, routes=app.routes,
                             description="Reranking and embedding server: Cohere, TEI and OpenAI APIs, /v1/search.")
        requests = _requests(config.max_documents, [*config.reranker, *config.cascade], list(config.embedder))
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if method == "post" and path in requests:
                    operation["requestBody"] = {"required": True, "content": {
                        "application/json": {"schema": requests[path]}}}
                operation["responses"] = _responses(path, method)
                if path == "/health" or (path == "/metrics" and not config.protect_metrics):
                    operation["security"] = []  # open: no key needed
        if app.state.keys:
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


__all__ = ["document_api"]
