"""The README's and docs pages' examples, read as tests (used by tests/test_docs.py).

Every fenced ``bash`` (``sh``, ``shell``) or ``python`` (``py``) block of README.md and docs/*.md
is an example. It runs as written, from a folder that links every top-level entry of the checkout
(so ``artifacts/``, ``models/`` and ``.venv`` resolve and what an example writes lands aside), with
``.venv/bin`` first on PATH, after the demo's artifacts exist. The conventions, all visible on the
rendered page:

- ``# not run: REASON`` as a block's first line: shown, never run; the reason is the test's skip
  reason (a GPU, a model hub, a Ray cluster, minutes of CPU, ...).
- ``# continues the example above`` as a python block's first line: the page's previous python
  example is run first, in the same process (for a page that builds one example in steps).
- A fenced ``output`` block right after an example (prose may sit between) is what the example
  prints on stdout. Compared line by line, blank lines and runs of spaces ignored: ``...`` matches
  any text within a line, and a line that is only ``...`` any number of lines; a number with
  decimals matches within 2 units of its last digit (0.97: 0.95 to 0.99), an integer exactly.
- A ``bash`` block running ``crossrank serve`` (not ``--ray``) is a server: the tests start it in the
  background ($CROSSRANK_PORT set to a free port), wait for ``GET /health``, and the page's later
  examples talk to it: their ``127.0.0.1:8080`` / ``localhost:8080`` become that port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
OUTPUT = "output"
NOT_RUN = "# not run:"
CONTINUES = "# continues the example above"
DEFAULT_PORT_ADDRESSES = ("127.0.0.1:8080", "localhost:8080")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_SERVE = re.compile(r"^\s*crossrank\s+serve\b")
_NUMBER = r"(?<![\d.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\d)"


@dataclass(frozen=True)
class Block:
    """A fenced block: its language (the info string's first word, lower case) and text."""
    page: str
    line: int        # 1-based line of the opening fence
    language: str
    code: str


@dataclass(frozen=True)
class Example:
    page: str                    # relative to the checkout, e.g. "docs/serving.md"
    line: int
    language: str                # "bash" or "python"
    code: str
    not_run: str | None = None   # the marker's reason
    expected: str | None = None  # the output block's text
    server: bool = False         # runs `crossrank serve`
    server_above: "Example | None" = None   # the page's nearest server example above this one
    continues: "Example | None" = None      # the example it continues

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    def program(self) -> str:
        """The code to run: the examples it continues first."""
        return (self.continues.program() + "\n" if self.continues else "") + self.code


def fenced_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of a Markdown text (indented ones in list items too), in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body, j = [], i + 1
        while j < len(lines):
            closing = re.match(rf"^ {{0,{indent + 3}}}{fence[0]}{{{len(fence)},}}\s*$", lines[j])
            if closing:
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].lstrip())
            j += 1
        info = opening["info"].split()
        blocks.append(Block(page, i + 1, info[0].lower() if info else "", "\n".join(body) + "\n"))
        i = j + 1
    return blocks


class DocsError(ValueError):
    """A page breaks the conventions (named by page and line)."""


def examples_of(text: str, page: str) -> list[Example]:
    """The page's examples, with their markers, expected outputs, servers and continuations."""
    examples: list[Example] = []
    previous_block_runs = False
    server = None
    last_python = None
    for block in fenced_blocks(text, page):
        if block.language == OUTPUT:
            if not previous_block_runs:
                raise DocsError(f"{page}:{block.line}: an output block must follow a bash or python example")
            last = examples[-1]
            if last.not_run:
                raise DocsError(f"{page}:{block.line}: an output block after an example marked not run")
            examples[-1] = replace(last, expected=block.code)
            if last is last_python:
                last_python = examples[-1]
            previous_block_runs = False
            continue
        language = LANGUAGES.get(block.language)
        previous_block_runs = language is not None
        if language is None:
            continue
        first = block.code.lstrip("\n").split("\n", 1)[0].strip()
        not_run = None
        if first.lower().startswith(NOT_RUN):
            not_run = first[len(NOT_RUN):].strip()
            if not not_run:
                raise DocsError(f"{page}:{block.line}: '{NOT_RUN}' must say why (e.g. '{NOT_RUN} needs a GPU')")
        continues = None
        if first.lower() == CONTINUES:
            if language != "python" or last_python is None:
                raise DocsError(f"{page}:{block.line}: '{CONTINUES}' needs a python example above it")
            continues = last_python
        is_server = language == "bash" and not not_run and any(
            _SERVE.match(line) and "--ray" not in line for line in _joined_lines(block.code))
        example = Example(page, block.line, language, block.code, not_run=not_run, server=is_server,
                          server_above=server, continues=continues)
        examples.append(example)
        if is_server:
            server = example
        if language == "python":
            last_python = example
    return examples


def _joined_lines(code: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return code.replace("\\\n", " ").splitlines()


def collect(root: Path, pages: list[str]) -> list[Example]:
    examples = []
    for page in pages:
        examples += examples_of((root / page).read_text(encoding="utf-8"), page)
    return examples


def with_port(code: str, port: int) -> str:
    """The code with the default server address replaced by 127.0.0.1:port."""
    for address in DEFAULT_PORT_ADDRESSES:
        code = code.replace(address, f"127.0.0.1:{port}")
    return code


# -- expected output ----------------------------------------------------------------------------

def _normal_lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _line_pattern(expected: str) -> tuple[re.Pattern, list[str]]:
    """A regex for one expected line and the expected numbers it captures, in order."""
    parts, numbers = [], []
    for piece in re.split(rf"(\.\.\.|{_NUMBER})", expected):
        if not piece:
            continue
        if piece == "...":
            parts.append(".*")
        elif re.fullmatch(_NUMBER, piece):
            parts.append(f"({_NUMBER})")
            numbers.append(piece)
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts)), numbers


def _close(expected: str, actual: str) -> bool:
    exponent = Decimal(expected).as_tuple().exponent
    tolerance = 2 * Decimal(10) ** exponent if exponent < 0 else Decimal(0)
    return abs(Decimal(actual) - Decimal(expected)) <= tolerance


def line_matches(expected: str, actual: str) -> bool:
    pattern, numbers = _line_pattern(" ".join(expected.split()))
    found = pattern.fullmatch(" ".join(actual.split()))
    return bool(found) and all(_close(e, a) for e, a in zip(numbers, found.groups()))


def output_mismatch(expected: str, actual: str) -> str | None:
    """None when ``actual`` matches ``expected`` (the rules in the module docstring), else why not."""
    want, got = _normal_lines(expected), _normal_lines(actual)
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(want):
                memo[i, j] = j == len(got)
            elif want[i] == "...":
                memo[i, j] = any(match(i + 1, k) for k in range(j, len(got) + 1))
            else:
                memo[i, j] = j < len(got) and line_matches(want[i], got[j]) and match(i + 1, j + 1)
        return memo[i, j]

    if match(0, 0):
        return None
    unmatched = next((line for line in want if line != "..." and not any(line_matches(line, g) for g in got)), None)
    hint = f"no printed line matches {unmatched!r}" if unmatched else "the lines are in another order or count"
    return f"{hint}\n--- expected\n{expected.rstrip()}\n--- printed\n{actual.rstrip()}"


__all__ = ["Block", "CONTINUES", "DocsError", "Example", "NOT_RUN", "OUTPUT", "collect", "examples_of",
           "fenced_blocks", "line_matches", "output_mismatch", "with_port"]
