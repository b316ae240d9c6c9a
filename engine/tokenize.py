"""Tokenization with Rust ``tokenizers``: the query once, all documents in one parallel call.

Pair rows are assembled with numpy from the pieces of the tokenizer's own pair template
(``[CLS] q [SEP] d [SEP]`` for BERT, ``<s> q </s></s> d </s>`` for XLM-R), truncating only the
document side, so the ids equal ``tokenizer.encode(query, document)`` with ``only_second``
truncation.

Decoder rerankers take a prompt template instead (``PromptTemplate``, the manifest's "prompt"):
prefix and suffix are tokenized once, the query part (with the instruction) once per query, the
document part of every document in one call; only the document is truncated, the suffix never.
Long texts are never tokenized whole: ``encode_prefixes`` reads each text only as far as the
tokens its window can hold (``crossrank.settings.CUT_CHARS_PER_TOKEN``), cut at a word boundary,
and gives the same ids as the whole text would.
"""

from __future__ import annotations

import string
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from crossrank.errors import ArtifactError, InvalidArgumentError, check_query
from crossrank.settings import CUT_CHARS_PER_TOKEN, CUT_GROWTH, CUT_MAX_CHARS_PER_TOKEN, CUT_MIN_CHARS


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A Rust ``tokenizers`` file; ArtifactError naming the file when it is not one."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on a malformed file
        raise ArtifactError(f"{str(path)!r} is not a tokenizers file (tokenizer.json): {err}") from None


def _cut_at(text: str, chars: int) -> int:
    """Where to cut ``text`` to about ``chars`` characters: before a whitespace in its second half
    (a word boundary), else at ``chars``; ``len(text)`` when it is no longer."""
    if len(text) <= chars:
        return len(text)
    space = max(text.rfind(c, chars // 2, chars + 1) for c in (" ", "\n", "\t"))
    return space if space > 0 else chars


def _settled(text: str, cut: int, encoding: Encoding, keep: int) -> bool:
    """Whether ``encoding`` (of ``text[:cut]``) holds the whole text's first ``keep`` content
    tokens: that many end before the word and whitespace run at the cut, which the cut may have
    changed (pre-tokenizers split at whitespace, so every token before them is the whole text's)."""
    safe = cut
    while safe > 0 and not text[safe].isspace() and not text[safe - 1].isspace():
        safe -= 1  # a cut inside a word: that word's tokens may differ
    while safe > 0 and text[safe - 1].isspace():
        safe -= 1
    ends = [end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
    return bisect_right(ends, safe) >= keep


def encode_prefixes(tokenizer: Tokenizer, texts: list[str], keep: int | None,
                    add_special_tokens: bool = False) -> list[Encoding]:
    """``tokenizer.encode_batch(texts)``, reading each long text only as far as its first
    ``keep`` content tokens need: a text is cut to ``keep x CUT_CHARS_PER_TOKEN`` characters at a
    word boundary; when the prefix holds fewer than ``keep`` tokens that the cut cannot have
    changed, it is read again ``CUT_GROWTH`` times further, up to ``keep x
    CUT_MAX_CHARS_PER_TOKEN`` characters (at least CUT_MIN_CHARS). The first ``keep`` content tokens
    are then those of the whole text (past the last step: of its longest prefix read). ``keep``
    None: whole texts."""
    if keep is None or all(len(t) <= keep * CUT_CHARS_PER_TOKEN for t in texts):
        return tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
    encodings: list[Encoding | None] = [None] * len(texts)
    most = max(keep * CUT_MAX_CHARS_PER_TOKEN, CUT_MIN_CHARS)
    pending, chars = list(range(len(texts))), keep * CUT_CHARS_PER_TOKEN
    while pending:
        cuts = [_cut_at(texts[i], chars) for i in pending]
        done = tokenizer.encode_batch([texts[i][:cut] for i, cut in zip(pending, cuts)],
                                      add_special_tokens=add_special_tokens)
        last = chars >= most
        retry = []
        for i, cut, encoding in zip(pending, cuts, done):
            if last or cut == len(texts[i]) or _settled(texts[i], cut, encoding, keep):
                encodings[i] = encoding
            else:
                retry.append(i)
        pending, chars = retry, min(chars * CUT_GROWTH, most)
    return encodings


@dataclass(frozen=True)
class PairTemplate:
    """Special tokens around the two sequences, and the type id of each region."""

    prefix: np.ndarray
    middle: np.ndarray
    suffix: np.ndarray
    first_type: int
    second_type: int

    @property
    def special_count(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _template(tokenizer: Tokenizer, path: str | Path) -> PairTemplate:
    pair = tokenizer.encode("a", "b", add_special_tokens=True)
    seq = pair.sequence_ids
    ids, types = np.asarray(pair.ids, dtype=np.int64), pair.type_ids
    a_pos = [i for i, s in enumerate(seq) if s == 0]
    b_pos = [i for i, s in enumerate(seq) if s == 1]
    if not a_pos or not b_pos:
        raise ArtifactError(f"{str(path)!r} encodes no (query, document) pair: its tokenizer has no pair template")
    return PairTemplate(
        prefix=ids[: a_pos[0]], middle=ids[a_pos[-1] + 1: b_pos[0]], suffix=ids[b_pos[-1] + 1:],
        first_type=types[a_pos[0]], second_type=types[b_pos[0]],
    )


def _pad_id(tokenizer: Tokenizer) -> int:
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


@dataclass
class Rows:
    """Token rows ready for batching; ``owner[i]`` is the input item row i belongs to. Pair rows
    also say which of their document's tokens they hold: ``spans[i]`` = (first, end) token
    positions in the document (end excluded; windows of one document tile it from 0)."""

    ids: list[np.ndarray]
    types: list[np.ndarray]
    owner: np.ndarray
    spans: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(r) for r in self.ids), dtype=np.int64, count=len(self.ids))


class PairTokenizer:
    """(query, document) pairs -> rows of ids for a cross-encoder with a window of max_length."""

    accepts_instruction = False
    document_head = ""  # text a prompt template puts before each document, tokenized with it

    def __init__(self, tokenizer_path: str | Path, max_length: int):
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.template = self._pair_template(tokenizer_path)
        self.max_length = max_length
        self.pad_id = _pad_id(self.tokenizer)
        if max_length <= self.template.special_count + 2:
            raise InvalidArgumentError(f"max_length {max_length} leaves no room for text: this tokenizer's pair "
                                       f"template takes {self.template.special_count} special tokens")
        # A query may use at most half the window; the rest is the document's.
        self.max_query_tokens = (max_length - self.template.special_count) // 2

    def _pair_template(self, tokenizer_path: str | Path) -> PairTemplate:
        return _template(self.tokenizer, tokenizer_path)

    def encode_texts(self, texts: list[str], keep: int | None = None) -> list[np.ndarray]:
        """Token ids of each text; with ``keep``, its first ``keep`` only, reading no further
        than they need (``encode_prefixes``)."""
        encodings = encode_prefixes(self.tokenizer, texts, keep)
        return [np.asarray(e.ids[:keep], dtype=np.int64) for e in encodings]

    def document_tokens(self, max_tokens: int | None, overlap: int | None, max_windows: int | None) -> int | None:
        """The most tokens of a document ``pair_rows`` can use (a window, or ``max_windows``
        overlapping ones; at most ``max_tokens``); None: all (every window of a long document)."""
        window = self.max_length - self.template.special_count  # a query of no tokens leaves the most
        if overlap is not None:
            if max_windows is None:
                return max_tokens
            window += (max_windows - 1) * max(1, window - overlap)
        return window if max_tokens is None else min(window, max_tokens)

    def check_instruction(self, instruction):
        """``instruction`` if this model takes it (None: none, or the model's default), else an error."""
        if instruction is not None:
            raise InvalidArgumentError("instruction: this model takes none (only rerankers exported with a prompt "
                                       "template that has an {instruction} field do); leave it out")
        return None

    def encode_queries(self, queries: list[str], instruction: str | None = None) -> list[np.ndarray]:
        """The query side of each pair (with a prompt template: the query part, instruction included)."""
        self.check_instruction(instruction)
        return self.encode_texts(queries, keep=self.max_query_tokens)

    def encode_documents(self, texts: list[str], keep: int | None = None,
                         offsets: bool = False) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
        """The document side of each pair (``document_head`` + text), all in one parallel call:
        its first ``keep`` token ids (a long text read only as far as they need,
        ``encode_prefixes``), the tokens read of each (past ``keep`` they are the dropped ones) and,
        with ``offsets``, each kept token's (start, end) character offsets in its text ([n, 2]
        int64)."""
        head = self.document_head
        encodings = encode_prefixes(self.tokenizer, [head + t for t in texts] if head else texts, keep)
        ids = [np.asarray(e.ids[:keep], dtype=np.int64) for e in encodings]
        read = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        spans = None
        if offsets:  # the head's tokens get (0, 0)
            spans = [np.maximum(np.asarray(e.offsets[:keep], dtype=np.int64).reshape(-1, 2) - len(head), 0)
                     for e in encodings]
        return ids, read, spans

    def document_budget(self, query_ids: np.ndarray) -> int:
        return self.max_length - self.template.special_count - len(query_ids)

    def pair_rows(self, query_ids: list[np.ndarray], query_of_doc: np.ndarray, doc_ids: list[np.ndarray],
                  chunk_overlap: int | None = None, max_windows: int | None = None) -> Rows:
        """One row per document (truncated), or with ``chunk_overlap`` one row per window of a
        long document (windows overlap by that many tokens, at most ``max_windows`` of them, the
        first ones; ``owner`` maps rows to documents)."""
        t = self.template
        query_ids = [q[: self.max_query_tokens] for q in query_ids]
        heads = [np.concatenate([t.prefix, q, t.middle]) for q in query_ids]
        head_types = [np.full(len(h), t.first_type, dtype=np.int64) for h in heads]
        ids, types, owner, spans = [], [], [], []
        for doc_index, (qi, doc) in enumerate(zip(query_of_doc, doc_ids)):
            budget = self.document_budget(query_ids[qi])
            if chunk_overlap is None or len(doc) <= budget:
                starts = [0]
            else:
                stride = max(1, budget - chunk_overlap)
                starts = list(range(0, max(len(doc) - chunk_overlap, 1), stride))[:max_windows]
            for start in starts:
                window = doc[start: start + budget]
                tail = np.concatenate([window, t.suffix])
                ids.append(np.concatenate([heads[qi], tail]))
                types.append(np.concatenate([head_types[qi], np.full(len(tail), t.second_type, dtype=np.int64)]))
                owner.append(doc_index)
                spans.append((start, start + len(window)))
        return Rows(ids, types, np.asarray(owner, dtype=np.int64), np.asarray(spans, dtype=np.int64).reshape(-1, 2))


class TextTokenizer:
    """Single texts -> rows of ids with special tokens, truncated to max_length (bi-encoders)."""

    def __init__(self, tokenizer_path: str | Path, max_length: int):
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = _pad_id(self.tokenizer)
        self.special_count = len(self.tokenizer.encode("", add_special_tokens=True).ids)

    def rows(self, texts: list[str]) -> Rows:
        return self.rows_and_dropped(texts)[0]

    def rows_and_dropped(self, texts: list[str]) -> tuple[Rows, np.ndarray]:
        """The rows, and each text's tokens the truncation dropped (0: it fits the window; a long
        text is read only as far as its window needs, ``encode_prefixes``, so then a lower bound)."""
        keep = self.max_length - self.tokenizer.num_special_tokens_to_add(False)
        encodings = encode_prefixes(self.tokenizer, texts, keep, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        types = [np.asarray(e.type_ids, dtype=np.int64) for e in encodings]
        # each overflowing piece holds dropped tokens between its own special tokens
        dropped = np.fromiter((sum(len(o.ids) - self.special_count for o in e.overflowing) for e in encodings),
                              dtype=np.int64, count=len(encodings))
        return Rows(ids, types, np.arange(len(texts), dtype=np.int64)), dropped


PROMPT_PARTS = {"prefix": list, "query": list, "document": str, "suffix": list}


@dataclass(frozen=True)
class PromptTemplate:
    """A decoder reranker's prompt: ``prefix + query + document + suffix``, each part a list of
    pieces tokenized separately (as the model's reference code does) and concatenated. Prefix and
    suffix are literal text.

    Query pieces hold ``{query}`` and, for instruct-aware models, ``{instruction}``
    (``default_instruction`` when the caller gives none; without a default,
    ``query_without_instruction`` is used). ``document`` is one piece ending with ``{document}``:
    it is the only part truncated, from its end. Fields use ``str.format`` syntax.
    """

    prefix: tuple[str, ...]
    query: tuple[str, ...]
    document: str
    suffix: tuple[str, ...]
    default_instruction: str | None = None
    query_without_instruction: tuple[str, ...] | None = None

    @classmethod
    def from_manifest(cls, prompt: dict) -> "PromptTemplate":
        """The template of a manifest's "prompt" object; ValueError naming what is wrong."""
        problem = check_prompt(prompt)
        if problem:
            raise ValueError(f"prompt template {problem}")
        without = prompt.get("query_without_instruction")
        return cls(tuple(prompt["prefix"]), tuple(prompt["query"]), prompt["document"], tuple(prompt["suffix"]),
                   prompt.get("default_instruction"), tuple(without) if without is not None else None)

    @property
    def takes_instruction(self) -> bool:
        return any("{instruction}" in piece for piece in self.query)

    def query_pieces(self, query: str, instruction: str | None) -> list[str]:
        """The query part's pieces for one query (``instruction`` None: the default)."""
        if instruction is None:
            instruction = self.default_instruction
        if instruction is None and self.takes_instruction:
            return [piece.format(query=query) for piece in self.query_without_instruction]
        return [piece.format(query=query, instruction=instruction) for piece in self.query]


def check_prompt(prompt) -> str | None:
    """The problem with a manifest's "prompt" object, or None."""
    if not isinstance(prompt, dict):
        return f"must be an object, got {type(prompt).__name__}"
    for key, kind in PROMPT_PARTS.items():
        value = prompt.get(key)
        if not isinstance(value, kind) or (kind is list and not all(isinstance(p, str) for p in value)):
            return f"{key!r} must be {'a list of str' if kind is list else 'a str'}, got {value!r:.60}"
    if not prompt["document"].endswith("{document}") or prompt["document"].count("{") != 1:
        return f"'document' must end with its one field, {{document}}, got {prompt['document']!r:.60}"
    without = prompt.get("query_without_instruction")
    if without is not None and (not isinstance(without, list) or not all(isinstance(p, str) for p in without)):
        return f"'query_without_instruction' must be a list of str or null, got {without!r:.60}"
    for key, allowed in (("query", {"query", "instruction"}), ("query_without_instruction", {"query"})):
        for piece in prompt.get(key) or ():
            try:
                fields = {name for _, name, _, _ in string.Formatter().parse(piece) if name is not None}
            except ValueError as err:
                return f"{key!r} piece {piece!r:.60}: {err}"
            if not fields <= allowed:
                return f"{key!r} piece {piece!r:.60} has fields {sorted(fields)}; allowed: {sorted(allowed)}"
    if not any("{query}" in piece for piece in prompt["query"]):
        return f"'query' pieces need a {{query}} field, got {prompt['query']!r:.80}"
    default = prompt.get("default_instruction")
    if default is not None and (not isinstance(default, str) or not default.strip()):
        return f"'default_instruction' must be a non-blank str or null, got {default!r:.60}"
    if any("{instruction}" in piece for piece in prompt["query"]) and default is None:
        if without is None or not any("{query}" in piece for piece in without):
            return "has an {instruction} field but no 'default_instruction': it needs 'query_without_instruction'"
    return None


class PromptTokenizer(PairTokenizer):
    """(query, document) pairs -> rows of ids for a decoder reranker's prompt template.

    Rows are ``prefix + query part + document part[:budget] + suffix``, every token type 0; the
    query part is capped at half the window like a segment pair's query.
    """

    def __init__(self, tokenizer_path: str | Path, max_length: int, prompt: dict):
        self.prompt = PromptTemplate.from_manifest(prompt)
        self.accepts_instruction = self.prompt.takes_instruction
        self.document_head = self.prompt.document[: -len("{document}")]
        super().__init__(tokenizer_path, max_length)

    def _pair_template(self, tokenizer_path: str | Path) -> PairTemplate:
        empty = np.zeros(0, dtype=np.int64)
        return PairTemplate(prefix=self._pieces(self.prompt.prefix), middle=empty,
                            suffix=self._pieces(self.prompt.suffix), first_type=0, second_type=0)

    def _pieces(self, pieces) -> np.ndarray:
        ids = self.encode_texts(list(pieces)) if pieces else []
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def check_instruction(self, instruction):
        if instruction is None:
            return None
        if not self.accepts_instruction:
            raise InvalidArgumentError("instruction: this model's prompt template has no {instruction} field; "
                                       "leave it out")
        return check_query(instruction, "instruction")

    def encode_queries(self, queries: list[str], instruction: str | None = None) -> list[np.ndarray]:
        self.check_instruction(instruction)
        pieces = [self.prompt.query_pieces(query, instruction) for query in queries]
        flat = self.encode_texts([piece for per_query in pieces for piece in per_query])
        out, at = [], 0
        for per_query in pieces:
            out.append(np.concatenate(flat[at: at + len(per_query)]))
            at += len(per_query)
        return out


def pair_tokenizer(tokenizer_path: str | Path, max_length: int, prompt: dict | None = None) -> PairTokenizer:
    """The pair tokenizer of an artifact: its prompt template's (decoder rerankers), else its
    tokenizer's own pair template."""
    if prompt is None:
        return PairTokenizer(tokenizer_path, max_length)
    return PromptTokenizer(tokenizer_path, max_length, prompt)
