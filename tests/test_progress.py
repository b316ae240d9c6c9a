"""crossrank.progress: a bar on a terminal; a bounded number of whole lines anywhere else (logs, CI)."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

from crossrank.progress import STEP_PERCENT, LineProgress, progress_bar

ROOT = Path(__file__).resolve().parent.parent
MOST_LINES = 100 // STEP_PERCENT + 1  # start, every step but the last, done


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_log_gets_start_every_tenth_and_done_with_rate_never_redraws():
    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="indexing", unit="doc", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(10_000):
        bar.update(1)
    bar.close()
    bar.close()  # a second close writes nothing
    lines = lines_of(log)
    assert "\r" not in log.getvalue()
    assert len(lines) == MOST_LINES, lines
    assert lines[0] == "indexing: started (0/10000 doc)"
    assert [line.split()[1] for line in lines[1:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[-1].startswith("indexing: done, 10000/10000 doc in ") and lines[-1].endswith("doc/s)")


def test_large_uneven_steps_and_stages_stay_bounded():
    log = io.StringIO()
    with progress_bar(total=1000, desc="bench", unit="pair", file=log, leave=False) as bar:
        for phase in ("throughput", "latency", "latency", "budget"):
            bar.set_description(phase)  # a new stage is a line; the same one again is not
            for _ in range(25):
                bar.update(10)
    lines = lines_of(log)
    assert [line for line in lines if "started" in line] == [
        "bench: started (0/1000 pair)", "throughput: started (at 0/1000 pair)",
        "latency: started (at 250/1000 pair)", "budget: started (at 750/1000 pair)"]
    assert len(lines) <= MOST_LINES + 3
    assert lines[2].startswith("throughput: 10% (100/1000 pair, ")


def test_a_line_says_the_true_percentage_when_updates_jump():
    log = io.StringIO()
    with progress_bar(total=7245, desc="indexing", unit="doc", file=log) as bar:
        for _ in range(14):
            bar.update(512)
        bar.update(7245 - 14 * 512)
    percents = [line.split()[1] for line in lines_of(log)[1:-1]]
    assert percents == ["14%", "21%", "35%", "42%", "56%", "63%", "70%", "84%", "91%"], percents


def test_iteration_closes_and_postfix_rides_on_the_next_line():
    log = io.StringIO()
    bar = progress_bar(range(50), desc="epoch 1/1", unit="step", file=log)
    seen = 0
    for _ in bar:
        seen += 1
        bar.set_postfix(loss=0.123456)
    assert seen == 50
    lines = lines_of(log)
    assert len(lines) == MOST_LINES and lines[-1].startswith("epoch 1/1: done, 50/50 step")
    assert lines[-1].endswith("[loss=0.1235]")


def test_unknown_total_resumed_and_disabled():
    log = io.StringIO()
    with progress_bar(desc="scoring", unit="pair", file=log) as bar:
        for _ in range(1000):
            bar.update(3)
    assert lines_of(log)[0] == "scoring: started (0 pair)" and lines_of(log)[-1].startswith("scoring: done, 3000 pair")
    assert len(lines_of(log)) == 2
    log = io.StringIO()
    with progress_bar(total=100, initial=40, desc="scoring", unit="pair", file=log) as bar:
        bar.update(60)
    assert lines_of(log)[0] == "scoring: resumed at 40/100 pair"
    log = io.StringIO()
    with progress_bar(total=100, file=log, disable=True) as bar:
        bar.update(100)
    assert log.getvalue() == ""


def test_updates_from_many_threads_are_counted_once():
    log = io.StringIO()
    bar = progress_bar(total=40_000, desc="scoring", unit="pair", file=log)

    def work():
        for _ in range(10_000):
            bar.update(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.n == 40_000
    assert len(lines_of(log)) == MOST_LINES


def test_a_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm

    screen = Terminal()
    bar = progress_bar(total=10, desc="indexing", file=screen, smoothing=0.1)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    assert "indexing" in screen.getvalue() and "\r" in screen.getvalue()


def test_stderr_of_a_real_process_piped_to_a_log():
    code = ("from crossrank.progress import progress_bar\n"
            "bar = progress_bar(total=5000, desc='work', unit='item')\n"
            "for _ in range(5000): bar.update(1)\n"
            "bar.close()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr and len(result.stderr.splitlines()) == MOST_LINES


def test_cli_index_build_logs_lines(bi_int8, tmp_path):
    """A real command (embedding 600 documents in 38 calls) with stderr to a file."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": f"document {i} about graph number {i * 7}"}) + "\n"
                              for i in range(600)))
    log = tmp_path / "log"
    with log.open("w") as stderr:
        subprocess.run([sys.executable, "-m", "crossrank", "index", "build", "--embedder", str(bi_int8), "--corpus",
                        str(corpus), "--batch-size", "16", "--out", str(tmp_path / "index")],
                       stderr=stderr, stdout=subprocess.DEVNULL, check=True)
    text = log.read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("indexing: ")]
    assert lines[0] == "indexing: started (0/600 doc)" and lines[-1].startswith("indexing: done, 600/600 doc")
    assert len(lines) <= MOST_LINES


def test_progress_bars_are_made_in_one_place():
    """Every progress bar of the package, the export and the benchmarks comes from crossrank.progress."""
    allowed = ROOT / "engine" / "progress.py"
    found = []
    for folder in ("engine", "export", "kernels", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(name.split(".")[0] == "tqdm" for name in names):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"tqdm imported outside crossrank.progress: {found}"
