"""README.md and docs/*.md examples run as written (conventions: tests/doc_examples.py).

One test per fenced bash/python block: run after the demo's artifacts exist (built here once if
``make demo`` has not run), its exit status 0 and its printed output equal to the page's output
block when it shows one; a block marked ``# not run: REASON`` is a skip with that reason.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from doc_examples import (CONTINUES, NOT_RUN, DocsError, Example, collect, examples_of, fenced_blocks, line_matches,
                          output_mismatch, with_port)

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
EXAMPLES = collect(ROOT, PAGES)
EXAMPLE_TIMEOUT_S = 600
SERVER_START_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def demo_artifacts():
    """The artifacts the examples use (artifacts/ of the checkout, as ``make demo`` leaves them;
    exported here when missing or stale, reused when ``make demo`` ran)."""
    from crossrank.front.demo import prepare

    return prepare(ROOT / "artifacts", models=ROOT / "models")


def _workdir(tmp: Path) -> Path:
    """A folder linking every top-level entry of the checkout: relative paths resolve, outputs land here."""
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (tmp / entry.name).symlink_to(entry)
    return tmp


def _environment(port: int | None = None) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if port is not None:
        env["CROSSRANK_PORT"] = str(port)
    return env


def _command(example: Example, folder: Path, code: str) -> list[str]:
    if example.language == "python":
        script = folder / f"example_{example.line}.py"
        script.write_text(code)
        return [sys.executable, str(script)]
    return ["bash", "-e", "-o", "pipefail", "-c", code]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Servers:
    """`crossrank serve` examples as real processes on 127.0.0.1, started once, stopped at the end."""

    def __init__(self, folder: Path):
        self.folder, self.running = folder, {}

    def port_of(self, example: Example) -> int:
        if example.name not in self.running:
            port, log = _free_port(), self.folder / f"server-{example.line}.log"
            with log.open("w") as out:
                process = subprocess.Popen(_command(example, self.folder, example.code), cwd=self.folder,
                                           env=_environment(port), stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            self.running[example.name] = (process, port)
            self._wait_healthy(example, process, port, log)
        return self.running[example.name][1]

    @staticmethod
    def _wait_healthy(example: Example, process, port: int, log: Path) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{example.name}: the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"{example.name}: /health not 200 within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        for process, _ in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    pool = Servers(_workdir(tmp_path_factory.mktemp("doc-servers")))
    yield pool
    pool.stop()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example(example: Example, request, tmp_path):
    if example.not_run:
        pytest.skip(f"{example.name}: not run: {example.not_run}")
    request.getfixturevalue("demo_artifacts")
    pool = request.getfixturevalue("servers")
    if example.server:
        pool.port_of(example)  # started, and /health answered 200
        return
    code = example.program()
    if example.server_above is not None:
        code = with_port(code, pool.port_of(example.server_above))
    folder = _workdir(tmp_path)
    try:
        result = subprocess.run(_command(example, folder, code), cwd=folder, env=_environment(), capture_output=True,
                                text=True, timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{example.name}: still running after {EXAMPLE_TIMEOUT_S} s:\n{code}")
    assert result.returncode == 0, (f"{example.name} failed (exit status {result.returncode}):\n{code}\n"
                                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
    if example.expected is not None:
        mismatch = output_mismatch(example.expected, result.stdout)
        assert mismatch is None, f"{example.name}: the output differs from the page's: {mismatch}"


# -- the conventions themselves -------------------------------------------------------------------

def test_every_page_follows_the_conventions():
    for page in PAGES:
        examples_of((ROOT / page).read_text(encoding="utf-8"), page)  # raises DocsError naming the block
    assert EXAMPLES, "no examples found"


def test_every_command_is_listed_with_its_purpose():
    """The README's command table and docs/cli.md's synopsis name every `crossrank` subcommand."""
    from crossrank.front.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(subcommands.choices)
    table = re.findall(r"^\| `crossrank ([\w-]+)` \| ([^|]*[a-z][^|]*) \|$", (ROOT / "README.md").read_text(), re.M)
    listed = {name for name, _ in table}
    assert listed == commands, f"README command table: missing {commands - listed}, unknown {listed - commands}"
    synopsis = (ROOT / "docs" / "cli.md").read_text()
    assert not [c for c in commands if f"crossrank {c} " not in synopsis], "docs/cli.md's synopsis misses a command"


PAGE = f"""# A page

```bash
crossrank serve --reranker artifacts/r   # http://127.0.0.1:8080
```

- a list item with an example:

  ```bash
  {NOT_RUN} needs a GPU
  crossrank bench --device cuda artifacts/r
  ```

```python
x = 1
```

prints:

```output
1.00 ...
```

```python
{CONTINUES}
print(x)
```

```text
not an example
```

```sh
curl -s http://localhost:8080/health
```
"""


def test_collector_reads_markers_outputs_servers_and_continuations():
    assert [b.language for b in fenced_blocks(PAGE, "p.md")] == ["bash", "bash", "python", "output", "python", "text",
                                                                 "sh"]
    serve, gpu, first, second, curl = examples_of(PAGE, "p.md")
    assert serve.server and serve.name == "p.md:3" and not gpu.server
    assert gpu.not_run == "needs a GPU" and gpu.code.startswith(NOT_RUN)  # list indentation removed
    assert first.expected == "1.00 ...\n" and second.continues == first
    assert second.program() == "x = 1\n\n" + second.code
    assert curl.language == "bash" and curl.server_above == serve
    assert with_port(curl.code, 4321) == "curl -s http://127.0.0.1:4321/health\n"


@pytest.mark.parametrize("page, problem", [
    ("```output\n1\n```\n", "must follow"),
    ("```bash\n# not run:\nls\n```\n", "must say why"),
    (f"```python\n{CONTINUES}\n```\n", "needs a python example"),
    ("```bash\n# not run: slow\nls\n```\n```output\nx\n```\n", "marked not run"),
], ids=["output-alone", "marker-without-reason", "continues-nothing", "output-of-not-run"])
def test_collector_refuses_broken_conventions(page, problem):
    with pytest.raises(DocsError, match=problem):
        examples_of(page, "p.md")


def test_output_matching():
    assert line_matches("0.97  TransE embeds", "0.9712 TransE embeds")
    assert not line_matches("0.97  TransE embeds", "0.9912 TransE embeds")  # beyond 2 units of the last digit
    assert line_matches("7245 documents", "7245 documents") and not line_matches("7245 documents", "7246 documents")
    assert line_matches("starter-reranker-L2-int8@10 ... * Pareto", "starter-reranker-L2-int8@10 0.41 12.0 * Pareto")
    assert not line_matches("starter-reranker-L2-int8@10 ...", "starter-reranker-L4-int8@10 0.41")
    assert line_matches('{"id":"...","results":[{"index":0,"relevance_score":0.99', '{"id":"ab-12","results":'
                        '[{"index":0,"relevance_score":0.9911')
    printed = "header\n\nrow 1\nrow 2\nrow 3\nbest: x\n"
    assert output_mismatch("header\n...\nbest: x", printed) is None
    assert output_mismatch("header\nrow 1\n...", printed) is None
    assert "no printed line matches 'best: y'" in output_mismatch("header\n...\nbest: y", printed)
    assert "order or count" in output_mismatch("row 2\nrow 1\n...", printed)
    assert output_mismatch("header\nrow 1", printed) is not None  # lines left over
