"""Prompt templates of decoder yes/no rerankers: JSON files under ``templates/`` (or a user's
file), checked and completed at export, then stored as data in the manifest ("prompt").

A template names the pieces of the prompt (see ``crossrank.tokenize.PromptTemplate``), the
answer tokens ``yes_token`` / ``no_token`` (vocabulary entries, as ``convert_tokens_to_ids`` takes
them), the default instruction and the model card's window (``max_length``). The reference
(``reference_ids``) tokenizes the prompt as the model card does: the prefix, the body
(``query part + document part``, truncated from its end) and the suffix, each on its own; the
runtime tokenizes the query part once per query and documents in one call, and the export checks
on real text that both give the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from crossrank.tokenize import check_prompt

from .errors import SourceError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_KEYS = {"name", "source", "prefix", "query", "query_without_instruction", "document", "suffix", "yes_token",
                 "no_token", "default_instruction", "max_length"}


def template_names() -> list[str]:
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.json"))


def load_template(name_or_path: str | Path) -> dict:
    """A bundled template by name, or a JSON file; SourceError naming what is wrong."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = TEMPLATES_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise SourceError(f"--template {str(name_or_path)!r} is neither a bundled template {template_names()} "
                              f"nor a .json file")
    try:
        template = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SourceError(f"--template {str(path)!r} cannot be read: {err}") from err
    problem = check_prompt(template)
    unknown = sorted(set(template) - TEMPLATE_KEYS) if isinstance(template, dict) else []
    if not problem and unknown:
        problem = f"has unknown key {unknown[0]!r} (known: {sorted(TEMPLATE_KEYS)})"
    for key in ("yes_token", "no_token"):
        if not problem and not (isinstance(template.get(key), str) and template[key]):
            problem = f"needs {key!r}, the answer token as the vocabulary spells it"
    max_length = template.get("max_length") if isinstance(template, dict) else None
    if not problem and max_length is not None and (not isinstance(max_length, int) or max_length < 8):
        problem = f"'max_length' must be an integer >= 8 or null, got {max_length!r:.40}"
    if problem:
        raise SourceError(f"template {str(path)!r} {problem}")
    return {"name": template.get("name", path.stem), **template}


def answer_token_ids(template: dict, tokenizer) -> tuple[int, int]:
    """(yes id, no id) in a ``tokenizers.Tokenizer``; SourceError when the vocabulary lacks one."""
    ids = []
    for key in ("yes_token", "no_token"):
        token_id = tokenizer.token_to_id(template[key])
        if token_id is None:
            raise SourceError(f"template {template['name']!r}: the tokenizer has no token {template[key]!r} "
                              f"({key}); is this the model the template is for?")
        ids.append(token_id)
    return ids[0], ids[1]


def reference_ids(hf_tokenizer, template: dict, query: str, document: str, max_length: int,
                  instruction: str | None = None) -> list[int]:
    """The model card's ids of one pair, with a ``transformers`` tokenizer and without crossrank's
    runtime: tokenize(prefix) + tokenize(body)[:room] + tokenize(suffix), where the body is the
    query part and the document part as ONE text (query pieces before the last are tokenized on
    their own) and room = max_length minus prefix and suffix."""
    from crossrank.tokenize import PromptTemplate

    prompt = PromptTemplate.from_manifest(template)

    def encode(texts) -> list[int]:
        return [i for text in texts for i in hf_tokenizer(text, add_special_tokens=False)["input_ids"]]

    prefix, suffix = encode(prompt.prefix), encode(prompt.suffix)
    query_part = prompt.query_pieces(query, instruction)
    body = encode(query_part[:-1]) + encode([query_part[-1] + prompt.document.format(document=document)])
    return prefix + body[: max_length - len(prefix) - len(suffix)] + suffix
