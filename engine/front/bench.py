"""``crossrank bench``: measure an artifact on a workload.

``bench`` measures an artifact (reranker: pairs/s; embedder: texts/s) on a workload: throughput
and padding, latency per request size, useful GFLOP/s against this machine's measured GEMM rate,
peak RSS and cold start; optionally the same weights through sentence-transformers in the same
run, and a report folder (markdown, JSON, PNG plots).

Useful FLOPs need the encoder's shape (layers, hidden, intermediate). The runtime does not parse
ONNX protobufs (``onnx`` is an export-only dependency) and ONNX Runtime does not expose weight
shapes, so the shape comes from, in order: ``--encoder-shape``, a future manifest ``encoder``
entry, or the ``config.json`` of the source folder recorded in the manifest, used only when its
sha256 equals the one recorded at export. Without any of them the GFLOP/s line says so rather
than guess (a file-size estimate would count the embedding table, half of MiniLM's weights).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from crossrank.artifact import load_artifact, sha256_file
from crossrank.embedder import Embedder
from crossrank.errors import InvalidArgumentError, MissingFileError, OutputExistsError
from crossrank.front.args import (add_workload_arguments, batch_tokens_arg, int_list_arg, int_list_type,
                                  positive_int_arg, threads_arg)
from crossrank.front.measure import (cold_start_seconds, encoder_flops, gemm_gflops, machine_name, measure_latency,
                                     measure_throughput, peak_rss_mb)
from crossrank.front.peers import sentence_transformers
from crossrank.front.workload import load_workload, request_of_size, spread
from crossrank.progress import progress_bar
from crossrank.reranker import Reranker
from crossrank.session import require_device
from crossrank.settings import BATCH_TOKENS_RANGE

VS_CHOICES = ("sentence-transformers",)
DEFAULT_SIZES = {"cross": (20, 100), "bi": (1, 20)}
REPORT_SIZES = {"cross": (1, 5, 10, 20, 50, 100), "bi": (1, 5, 20, 100)}
REPORT_BUDGETS = (256, 512, 1024, 2048, 4096, 8192)
BUDGET_ITEMS = 200      # items per point of the throughput-vs-budget curve
CHUNK_ITEMS = 256       # items per scoring call in the throughput run (progress granularity)


def _sizes(text: str) -> list[int] | str:
    return "own" if text.strip() == "own" else int_list_arg(text)


def _encoder_shape(text: str) -> dict:
    parts = text.split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected LAYERS,HIDDEN,INTERMEDIATE (e.g. 6,384,1536), got {text!r}")
    return dict(zip(("layers", "hidden", "intermediate"), values))


# -- bench ----------------------------------------------------------------------------------

def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure an artifact on a workload: throughput, latency, padding, GFLOP/s, RSS",
        description="Run a reranker (or embedder) artifact on a workload and report pairs/s (texts/s), "
                    "p50/p95/p99 latency per request size, padding fraction, useful GFLOP/s against "
                    "this machine's measured GEMM rate, peak RSS and cold start. Settings come from "
                    "the artifact's runtime.json (crossrank tune) unless given here.",
    )
    p.add_argument("artifact", metavar="ART", help="artifact folder (cross-encoder or bi-encoder)")
    add_workload_arguments(p, 30, "used for the throughput run")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N,N,...|own",
                   help="documents per request for the latency figures (default 20,100 for a reranker, "
                        "1,20 texts for an embedder; 'own' = the workload's requests as they are; "
                        "the default with --workload is own)")
    p.add_argument("--runs", type=positive_int_arg, default=None, metavar="N",
                   help="timed runs per request size (default: about 200 pairs' worth, 3 to 20)")
    p.add_argument("--threads", type=threads_arg, default=None, help="intra-op threads (default: runtime.json, else physical cores)")
    p.add_argument("--batch-tokens", type=batch_tokens_arg, default=None, metavar="N",
                   help="token budget per model call (default: runtime.json, else the device default)")
    p.add_argument("--budgets", type=int_list_type(*BATCH_TOKENS_RANGE), default=None, metavar="N,N,...",
                   help="batch token budgets for the throughput-vs-budget curve (default with --report: "
                        f"{','.join(map(str, REPORT_BUDGETS))}; else none)")
    p.add_argument("--encoder-shape", type=_encoder_shape, default=None, metavar="L,H,I",
                   help="layers,hidden,intermediate for useful FLOPs (default: the source config.json "
                        "recorded in the manifest, when present and unchanged)")
    p.add_argument("--vs", choices=VS_CHOICES, default=None,
                   help="also run the same weights through sentence-transformers (needs the 'dev' extra "
                        "and the source folder) and print the ratios")
    p.add_argument("--source", metavar="DIR", default=None,
                   help="Hugging Face folder the artifact was exported from (default: the manifest's source, "
                        "if it is a local folder)")
    p.add_argument("--report", metavar="DIR", default=None, help="write report.md, report.json and PNG plots here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_bench)


def _source_folder(artifact, explicit: str | None) -> Path | None:
    if explicit is not None:
        folder = Path(explicit)
        if not (folder / "config.json").is_file():
            raise MissingFileError(f"--source {explicit!r} is not a Hugging Face model folder (no config.json)")
        return folder
    name = (artifact.manifest.get("source") or {}).get("name")
    if name and (Path(name) / "config.json").is_file():
        return Path(name)
    return None


def resolve_encoder_shape(artifact, explicit: dict | None, source: Path | None) -> tuple[dict | None, str]:
    """(shape, where it came from) for useful-FLOP figures; (None, why) when unknown."""
    if explicit is not None:
        return explicit, "--encoder-shape"
    recorded = artifact.manifest.get("encoder")
    if isinstance(recorded, dict) and {"layers", "hidden", "intermediate"} <= recorded.keys():
        return {k: int(recorded[k]) for k in ("layers", "hidden", "intermediate")}, "manifest"
    if source is None:
        return None, "unknown (no local source folder): pass --encoder-shape LAYERS,HIDDEN,INTERMEDIATE"
    config_path = source / "config.json"
    expected = ((artifact.manifest.get("source") or {}).get("files") or {}).get("config.json")
    if expected and sha256_file(config_path) != expected:
        return None, f"unknown ({config_path} changed since export): pass --encoder-shape"
    config = json.loads(config_path.read_text())
    try:
        shape = {"layers": int(config["num_hidden_layers"]), "hidden": int(config["hidden_size"]),
                 "intermediate": int(config["intermediate_size"])}
    except (KeyError, TypeError, ValueError):
        return None, f"unknown ({config_path} lacks the encoder sizes): pass --encoder-shape"
    return shape, str(config_path)


class _Progress:
    """One progress bar over all the work (items), its description naming the phase."""

    def __init__(self, total: int, unit: str, quiet: bool):
        self.bar = progress_bar(total=total, unit=unit, desc="bench", file=sys.stderr, leave=False, disable=quiet)

    def phase(self, name: str) -> None:
        self.bar.set_description(name)

    def add(self, items: int) -> None:
        self.bar.update(items)

    def close(self) -> None:
        self.bar.close()


def _chunks(requests: list[dict], items: int) -> list[list[dict]]:
    """Whole requests grouped into calls of about ``items`` pairs."""
    chunks, current, count = [], [], 0
    for request in requests:
        current.append(request)
        count += len(request["documents"])
        if count >= items:
            chunks.append(current)
            current, count = [], 0
    if current:
        chunks.append(current)
    return chunks


class _Model:
    """The crossrank side of a bench: same calls for a reranker and an embedder."""

    def __init__(self, artifact, device: str, threads, batch_tokens):
        self.kind = artifact.kind
        cls = Reranker if self.kind == "cross" else Embedder
        self.model = cls(artifact.path, device=device, threads=threads, batch_tokens=batch_tokens)
        self.unit = "pairs" if self.kind == "cross" else "texts"

    def run(self, requests: list[dict]) -> None:
        """Score (embed) every document of the requests in one call."""
        if self.kind == "cross":
            self.model.score([(r["query"], d) for r in requests for d in r["documents"]])
        else:
            self.model.embed([d for r in requests for d in r["documents"]])

    def request(self, query: str, documents: list[str]) -> None:
        if self.kind == "cross":
            self.model.rerank(query, documents)
        else:
            self.model.embed(documents)

    def lengths(self, requests: list[dict]) -> np.ndarray:
        """Real token lengths of every item (pair rows / text rows)."""
        if self.kind == "bi":
            return self.model.token_lengths([d for r in requests for d in r["documents"]])
        return self.model.token_lengths([(r["query"], d) for r in requests for d in r["documents"]])


def _runs_for(size: int, runs: int | None) -> int:
    return runs if runs is not None else max(3, min(20, 200 // max(size, 1)))


def _latency(model: _Model, requests: list[dict], sizes, runs: int | None, progress: _Progress) -> list[dict]:
    rows = []
    if sizes == "own":
        own = requests if runs is None else requests[:runs]
        progress.phase("latency (own requests)")
        samples = []
        model.request(own[0]["query"], own[0]["documents"])  # warm-up
        for request in own:
            start = time.perf_counter()
            model.request(request["query"], request["documents"])
            samples.append((time.perf_counter() - start) * 1e3)
            progress.add(len(request["documents"]))
        counts = [len(r["documents"]) for r in own]
        p50, p95, p99 = np.percentile(samples, [50, 95, 99])
        label = f"own ({min(counts)}-{max(counts)} docs)" if min(counts) != max(counts) else f"1 x {counts[0]} (own)"
        rows.append({"label": label, "documents": float(np.mean(counts)), "runs": len(own),
                     "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)})
        return rows
    for size in sizes:
        query, documents = request_of_size(requests, size)
        count = _runs_for(size, runs)
        progress.phase(f"latency 1 x {size}")

        def call(q=query, d=documents):
            model.request(q, d)
            progress.add(len(d))

        latency = measure_latency(call, runs=count, warmup=1)
        rows.append({"label": f"1 x {size}", "documents": size, "runs": count,
                     "p50_ms": latency.p50_ms, "p95_ms": latency.p95_ms, "p99_ms": latency.p99_ms})
    return rows


def _budget_curve(artifact, args, requests: list[dict], budgets, progress: _Progress) -> list[dict]:
    subset, count = [], 0
    for request in requests:
        if count >= BUDGET_ITEMS:
            break
        subset.append(request)
        count += len(request["documents"])
    points = []
    for budget in budgets:
        progress.phase(f"budget {budget}")
        model = _Model(artifact, args.device, args.threads, budget)
        model.run(subset[:1])
        model.model.reset_stats()
        rate, seconds = measure_throughput(lambda: model.run(subset), count)
        progress.add(count)
        points.append({"batch_tokens": budget, "items_per_s": rate, "seconds": seconds,
                       "padding_fraction": model.model.padding_fraction})
    return points


def _vs_sentence_transformers(artifact, source: Path, args, chunks, requests, sizes, threads: int,
                              progress: _Progress) -> dict:
    peer = sentence_transformers(source, artifact.kind, artifact.max_length, args.device, threads)
    cross = artifact.kind == "cross"
    run = lambda reqs: peer.score([(r["query"], d) if cross else d for r in reqs for d in r["documents"]])
    request, system = peer.request, peer.system
    progress.phase("sentence-transformers")
    run(chunks[0][:1])
    items, start = 0, time.perf_counter()
    for chunk in chunks:
        run(chunk)
        n = sum(len(r["documents"]) for r in chunk)
        items += n
        progress.add(n)
    seconds = time.perf_counter() - start
    latency = None
    if sizes != "own":
        size = _vs_size(sizes)
        query, documents = request_of_size(requests, size)
        lat = measure_latency(lambda: request(query, documents), runs=_runs_for(size, args.runs), warmup=1)
        progress.add(len(documents) * (_runs_for(size, args.runs) + 1))
        latency = {"label": f"1 x {size}", "p50_ms": lat.p50_ms, "p95_ms": lat.p95_ms}
    return {"system": system, "source": str(source), "items_per_s": items / seconds, "seconds": seconds,
            "latency": latency}


def _vs_size(sizes: list[int]) -> int:
    """The request size compared with sentence-transformers: the 1 x 20 reference when measured."""
    return 20 if 20 in sizes else sizes[0]


def _check_bench_args(args, artifact) -> tuple[Path | None, list[int] | str]:
    """Everything that can be wrong with the arguments, checked before any measurement."""
    source = _source_folder(artifact, args.source)
    if args.vs is not None:
        if source is None:
            raise InvalidArgumentError(f"--vs {args.vs} needs the Hugging Face folder the artifact was exported from: "
                             f"the manifest's source {(artifact.manifest.get('source') or {}).get('name')!r} "
                             f"is not a local folder; pass --source DIR")
        if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("torch") is None:
            raise InvalidArgumentError(f"--vs {args.vs} needs sentence-transformers and torch: pip install 'crossrank[dev,export]'")
    sizes = args.sizes
    if sizes is None:
        sizes = "own" if args.workload else list(REPORT_SIZES[artifact.kind] if args.report else DEFAULT_SIZES[artifact.kind])
    require_device(args.device)
    if args.report is not None and Path(args.report).exists() and not Path(args.report).is_dir():
        raise OutputExistsError(f"--report {args.report!r} exists and is not a folder")
    return source, sizes


def run_bench(args) -> int:
    artifact = load_artifact(args.artifact)
    source, sizes = _check_bench_args(args, artifact)
    requests, workload_name = load_workload(args.workload)
    measured = spread(requests, args.queries or None)
    shape, shape_from = resolve_encoder_shape(artifact, args.encoder_shape, source)
    budgets = args.budgets if args.budgets is not None else (list(REPORT_BUDGETS) if args.report else [])

    model = _Model(artifact, args.device, args.threads, args.batch_tokens)
    options = model.model.options
    unit = model.unit
    chunks = _chunks(measured, CHUNK_ITEMS)
    n_items = sum(len(r["documents"]) for r in measured)
    latency_items = (sum(len(r["documents"]) for r in (measured if args.runs is None else measured[:args.runs]))
                     if sizes == "own" else sum(s * (_runs_for(s, args.runs) + 1) for s in sizes))
    budget_items = len(budgets) * min(n_items, BUDGET_ITEMS)
    vs_size = 0 if sizes == "own" else _vs_size(sizes)
    vs_items = n_items + vs_size * (_runs_for(vs_size, args.runs) + 1) if args.vs else 0
    progress = _Progress(n_items + latency_items + budget_items + vs_items, unit[:-1], args.quiet)
    try:
        lengths = model.lengths(measured)
        model.run(measured[:1])  # warm-up
        model.model.reset_stats()
        progress.phase("throughput")

        def run_all():
            for chunk in chunks:
                model.run(chunk)
                progress.add(sum(len(r["documents"]) for r in chunk))

        rate, seconds = measure_throughput(run_all, n_items)
        padding = model.model.padding_fraction
        latency = _latency(model, measured if sizes == "own" else requests, sizes, args.runs, progress)
        curve = _budget_curve(artifact, args, measured, budgets, progress) if budgets else []
        peak = peak_rss_mb()
        model = None  # free the session (and its memory) before sentence-transformers loads
        vs = (_vs_sentence_transformers(artifact, source, args, chunks, requests, sizes, options.threads, progress)
              if args.vs else None)
    finally:
        progress.close()
    if not args.quiet:
        print("measuring GEMM rate and cold start ...", file=sys.stderr)
    gemm = gemm_gflops()
    cold = cold_start_seconds(str(artifact.path), args.device, artifact.kind)
    useful = encoder_flops(lengths, **shape) / seconds / 1e9 if shape else None
    report = {
        "command": " ".join(["crossrank"] + sys.argv[1:]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_name(),
        "artifact": str(artifact.path), "kind": artifact.kind, "precision": artifact.precision,
        "device": args.device, "settings": options.values(), "settings_from": dict(options.origin),
        "workload": workload_name, "requests": len(measured), "unit": unit, "items": n_items,
        "mean_tokens": float(lengths.mean()) if len(lengths) else 0.0,
        "throughput": {"items_per_s": rate, "seconds": seconds, "padding_fraction": padding},
        "gemm_gflops": gemm, "encoder_shape": shape, "encoder_shape_from": shape_from,
        "useful_gflops": useful, "share_of_gemm": useful / gemm if useful else None,
        "latency": latency, "budgets": curve, "peak_rss_mb": peak, "cold_start_s": cold, "vs": vs,
    }
    print(format_bench(report))
    if args.report:
        write_bench_report(Path(args.report), report)
        print(f"\nreport: {Path(args.report) / 'report.md'}")
    return 0


def format_bench(r: dict) -> str:
    unit = r["unit"]
    s = r["settings"]
    origin = r["settings_from"]
    lines = [
        f"crossrank bench {r['artifact']}: {r['kind']} {r['precision']} on {r['device']}, threads {s['threads']} "
        f"({origin['threads']}), batch_tokens {s['batch_tokens']} ({origin['batch_tokens']}), "
        f"io_binding {'on' if s['io_binding'] else 'off'}",
        f"workload: {r['workload']}; {r['requests']} requests, {r['items']} {unit}, "
        f"{r['mean_tokens']:.0f} tokens per {unit[:-1]} on average",
        "",
        f"  throughput       {r['throughput']['items_per_s']:8.1f} {unit}/s   ({r['throughput']['seconds']:.1f} s)",
        f"  padding          {r['throughput']['padding_fraction']:8.1%}   of computed tokens",
    ]
    if r["useful_gflops"] is not None:
        lines.append(f"  useful compute   {r['useful_gflops']:8.1f} GFLOP/s = {r['share_of_gemm']:.0%} of this machine's "
                     f"fp32 GEMM ({r['gemm_gflops']:.0f} GFLOP/s); encoder "
                     f"{r['encoder_shape']['layers']}x{r['encoder_shape']['hidden']}x{r['encoder_shape']['intermediate']} "
                     f"from {r['encoder_shape_from']}")
    else:
        lines.append(f"  useful compute   n/a: encoder shape {r['encoder_shape_from']} "
                     f"(GEMM {r['gemm_gflops']:.0f} GFLOP/s)")
    lines += [f"  peak RSS         {r['peak_rss_mb']:8.0f} MB",
              f"  cold start       {r['cold_start_s']:8.2f} s   (new process to first result)", "",
              f"  {'request':<22} {'runs':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"]
    for row in r["latency"]:
        lines.append(f"  {row['label']:<22} {row['runs']:>5} {row['p50_ms']:>9.1f} {row['p95_ms']:>9.1f} {row['p99_ms']:>9.1f}")
    if r["budgets"]:
        lines += ["", f"  {'batch_tokens':>12} {unit + '/s':>10} {'padding':>8}"]
        for point in r["budgets"]:
            lines.append(f"  {point['batch_tokens']:>12} {point['items_per_s']:>10.1f} {point['padding_fraction']:>8.1%}")
    vs = r["vs"]
    if vs:
        lines += ["", f"  vs {vs['system']} ({vs['source']}):",
                  f"    throughput {vs['items_per_s']:.1f} {unit}/s -> crossrank "
                  f"{r['throughput']['items_per_s'] / vs['items_per_s']:.2f}x"]
        if vs["latency"]:
            ours = next(row for row in r["latency"] if row["label"] == vs["latency"]["label"])
            lines.append(f"    {vs['latency']['label']} p50 {vs['latency']['p50_ms']:.1f} ms -> crossrank "
                         f"{vs['latency']['p50_ms'] / ours['p50_ms']:.2f}x faster")
    return "\n".join(lines)


def write_bench_report(out: Path, report: dict) -> None:
    """report.json, report.md and the PNG plots (throughput vs budget, latency vs documents)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = report["unit"]
    images = []
    if report["budgets"]:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        xs = [p["batch_tokens"] for p in report["budgets"]]
        ax.plot(xs, [p["items_per_s"] for p in report["budgets"]], marker="o", color="#274")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("batch token budget (rows x padded length)")
        ax.set_ylabel(f"{unit}/s")
        ax.set_title(f"throughput vs batch token budget ({report['settings']['threads']} threads)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_budget.png", dpi=120)
        plt.close(fig)
        images.append("throughput_vs_budget.png")
    sized = [row for row in report["latency"] if row["label"].startswith("1 x ") and "own" not in row["label"]]
    if sized:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        xs = [row["documents"] for row in sized]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s--")):
            ax.plot(xs, [row[key] for row in sized], style, label=key.split("_")[0])
        ax.set_xlabel("documents per request" if report["kind"] == "cross" else "texts per call")
        ax.set_ylabel("latency (ms)")
        ax.set_title("latency vs request size")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_documents.png", dpi=120)
        plt.close(fig)
        images.append("latency_vs_documents.png")
    table = format_bench(report)
    md = ["# crossrank bench", "", f"Command: `{report['command']}`", "",
          f"Machine: {report['machine']}; created {report['created']}.", "", "```", table, "```", ""]
    md += [f"![{name}]({name})" for name in images]
    (out / "report.md").write_text("\n".join(md) + "\n")


__all__ = ["add_bench", "format_bench", "resolve_encoder_shape", "run_bench"]
