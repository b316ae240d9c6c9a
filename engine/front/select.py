"""``crossrank select``: choose a reranking configuration by measuring precision against latency on
this machine and the user's (or the bundled) labelled queries.

Candidates: the first stage alone, every reranker at every depth, and every cascade at every pair of
depths. Quality comes from one pass of each reranker over the first stage's candidates
(crossrank.evaluation.selection); latency is measured end to end (``Pipeline.search`` of one query:
embed, search, fetch, every reranking stage) for each configuration, configurations taking turns
on the same sample queries. The Pareto front (no other configuration is both faster and better)
is marked; with ``--latency-budget-ms`` the best configuration whose p95 fits is named.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrank.errors import InvalidArgumentError
from crossrank.evaluation.datasets import read_jsonl, semanlink_queries
from crossrank.evaluation.selection import Config, Point, best_within, config_metrics, mark_pareto, ranked_ids
from crossrank.front.args import add_device_argument, int_list_arg, positive_float_arg, positive_int_arg
from crossrank.front.measure import machine_name
from crossrank.front.model_folders import add_model_folder_arguments, reranker_artifacts
from crossrank.front.search import add_store_arguments, locate_first_stage, open_first_stage
from crossrank.pipeline import Pipeline
from crossrank.progress import progress_bar
from crossrank.reranker import Reranker

DEFAULT_DEPTHS = (10, 20, 50, 100)


@dataclass(frozen=True)
class LabelledQuery:
    text: str
    relevant: frozenset


def read_labelled_queries(path: str | Path) -> list[LabelledQuery]:
    """JSONL of ``{"query": str, "relevant": [id, ...]}`` (ids of documents in the index)."""
    queries = []
    for where, _, row in read_jsonl(path, "queries file", ("query", "relevant")):
        if not isinstance(row["query"], str) or not row["query"].strip():
            raise InvalidArgumentError(f'{where}: "query" must be a non-empty string, got {row["query"]!r:.60}')
        relevant = row["relevant"]
        if not isinstance(relevant, list) or not relevant or not all(isinstance(r, (str, int)) for r in relevant):
            raise InvalidArgumentError(f'{where}: "relevant" must be a non-empty list of document ids')
        queries.append(LabelledQuery(row["query"], frozenset(relevant)))
    if not queries:
        raise InvalidArgumentError(f"queries file {str(path)!r} holds no queries")
    return queries


def parse_cascades(text: str | None, names: list[str]) -> list[tuple[str, ...]]:
    """"A>C,B>C" -> [("A", "C"), ("B", "C")]; each name must be one of the rerankers'."""
    if text is None:
        return []
    cascades = []
    for part in text.split(","):
        chain = tuple(name.strip() for name in part.split(">"))
        unknown = [name for name in chain if name not in names]
        if len(chain) < 2 or unknown:
            raise InvalidArgumentError(f"--cascades {part!r}: a cascade is NAME>NAME[>NAME] of the --rerankers' "
                                       f"names {names}" + (f"; unknown: {unknown}" if unknown else ""))
        cascades.append(chain)
    return cascades


def candidate_configs(names: list[str], depths: list[int], cascades: list[tuple[str, ...]]) -> list[Config]:
    """The first stage, each reranker at each depth, each cascade at each decreasing chain of depths."""
    configs = [Config()]
    configs += [Config((name,), (depth,)) for name in names for depth in depths]
    for chain in cascades:
        for chosen in itertools.combinations(sorted(depths, reverse=True), len(chain)):
            configs.append(Config(chain, chosen))
    return configs


def score_candidates(reranker: Reranker, queries: list[str], documents: list[list[str]], depth: int,
                     progress) -> list[np.ndarray]:
    """The reranker's raw scores of each query's top ``depth`` candidates (one pass, shared
    batches): rankings are made on them, calibrated or not."""
    out = []
    step = 8
    for start in range(0, len(queries), step):
        part_q = queries[start: start + step]
        part_d = [docs[:depth] for docs in documents[start: start + step]]
        ranked = reranker.rerank_many(part_q, part_d, return_documents=False, raw_scores=True)
        for docs, ranking in zip(part_d, ranked):
            scores = np.full(len(docs), np.nan, dtype=np.float32)
            for r in ranking:
                scores[r.index] = r.score
            out.append(scores)
        progress(sum(len(d) for d in part_d))
    return out


def measure_latency(configs: list[Config], pipelines: dict[Config, Pipeline], queries: list[str], k: int,
                    expected: dict[Config, list[list]], progress) -> dict[Config, dict]:
    """p50/p95 ms per config over the sample queries (configs taking turns, one warm-up each), and
    how many of its rankings differ from the one computed from cached scores (should be 0)."""
    samples = {c: [] for c in configs}
    rerank_ms = {c: [] for c in configs}
    mismatches = {c: 0 for c in configs}
    for config in configs:
        pipelines[config].search(queries[0], k=k, top_n=None)
    for round_number, query in enumerate(queries):
        shift = round_number % len(configs)
        for config in configs[shift:] + configs[:shift]:
            start = time.perf_counter()
            result = pipelines[config].search(query, k=k, top_n=None)
            samples[config].append((time.perf_counter() - start) * 1e3)
            rerank_ms[config].append(result.timings_ms.get("rerank", 0.0))
            if result.ids != expected[config][round_number]:
                mismatches[config] += 1
            progress(1)
    out = {}
    for config in configs:
        p50, p95 = np.percentile(samples[config], [50, 95])
        pairs = config.pairs
        out[config] = {"p50_ms": float(p50), "p95_ms": float(p95), "rerank_ms": float(np.median(rerank_ms[config])),
                       "pairs_per_s": pairs / (float(np.median(rerank_ms[config])) / 1e3) if pairs else None,
                       "ranking_mismatches": mismatches[config]}
    return out


def add_select(sub) -> None:
    p = sub.add_parser(
        "select", help="measure quality against latency for rerankers, depths and cascades; pick one",
        description="Measure, on this machine and on labelled queries (yours with --queries, or the bundled "
                    "Semanlink tags), the quality (nDCG@10, MRR@10) and end-to-end latency (p50/p95 of one "
                    "request) of the first stage alone, every reranker at every depth, and every cascade at "
                    "every chain of depths; print the table with the Pareto front marked, the best "
                    "configuration within --latency-budget-ms, and (--out) a plot of quality vs latency.",
        epilog="example (after make demo): crossrank select --index artifacts/semanlink-index --rerankers "
               "models/starter-reranker-L2,models/starter-reranker-L4,models/starter-reranker "
               "--cascades 'starter-reranker-L2>starter-reranker' --dataset semanlink --split dev "
               "--latency-budget-ms 500 --out select-report")
    add_store_arguments(p, "the first stage (holding the labelled documents)")
    p.add_argument("--embedder", metavar="ART", help="bi-encoder artifact (default: the one recorded in the index)")
    p.add_argument("--rerankers", required=True, metavar="DIR,DIR,...",
                   help="cross-encoders to compare: artifact folders, or Hugging Face model folders (exported "
                        "once into --artifacts); each is named by its folder's name")
    p.add_argument("--cascades", metavar="A>B,...",
                   help="cascades to compare, by reranker names (default: each reranker into every slower one)")
    p.add_argument("--no-cascades", action="store_true", help="compare single rerankers only")
    p.add_argument("--depths", type=int_list_arg, default=list(DEFAULT_DEPTHS), metavar="N,N,...",
                   help="candidates a reranker (or a cascade stage) reranks, each <= --k (default 10,20,50,100)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", metavar="FILE.jsonl",
                        help='labelled queries: {"query": ..., "relevant": [id, ...]} per line')
    source.add_argument("--dataset", choices=["semanlink"], help="the bundled Semanlink tag queries")
    p.add_argument("--split", default="dev", choices=["dev", "test", "train"],
                   help="with --dataset: which tags (default dev; keep test for the final figure)")
    p.add_argument("--limit", type=positive_int_arg, default=None, help="use only the first N queries")
    p.add_argument("--k", type=positive_int_arg, default=100, help="first-stage candidates (default 100)")
    p.add_argument("--latency-queries", type=positive_int_arg, default=20, metavar="N",
                   help="queries timed per configuration, end to end (default 20)")
    p.add_argument("--latency-budget-ms", type=positive_float_arg, default=None, metavar="MS",
                   help="p95 budget: name the best configuration within it")
    add_device_argument(p, "where models run")
    add_model_folder_arguments(p)
    p.add_argument("--out", metavar="DIR", help="write select.md, select.json and select.png here")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_select)


def score_with_each(rerankers: dict[str, Reranker], texts: list[str], documents: list[list[str]], depth: int,
                    quiet: bool) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
    """Each reranker's scores of every query's top ``depth`` candidates, and its seconds."""
    scores, seconds = {}, {}
    with progress_bar(total=sum(min(len(d), depth) for d in documents) * len(rerankers), unit="pair",
                      desc="scoring candidates", disable=quiet) as bar:
        for name, reranker in rerankers.items():
            bar.set_description(f"scoring with {name}")
            start = time.perf_counter()
            scores[name] = score_candidates(reranker, texts, documents, depth, bar.update)
            seconds[name] = time.perf_counter() - start
    return scores, seconds


def _names(paths: list[str]) -> list[str]:
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def run_select(args) -> int:
    paths = [p for p in args.rerankers.split(",") if p.strip()]
    names = _names(paths)
    if not paths:
        raise InvalidArgumentError("--rerankers lists no artifact")
    if max(args.depths) > args.k:
        raise InvalidArgumentError(f"--depths {max(args.depths)} exceeds --k {args.k}: a reranker can only rerank "
                                   f"the first stage's candidates")
    # None: every reranker into every slower one, decided once their speed is measured below
    cascades = [] if args.no_cascades else parse_cascades(args.cascades, names) if args.cascades else None
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InvalidArgumentError(f"--out {args.out!r} exists and is not a folder")
    embedder_path = locate_first_stage(args)  # before any model loads or exports
    if args.queries:
        labelled = read_labelled_queries(args.queries)
        source = str(args.queries)
    else:
        labelled = [LabelledQuery(q.text, q.relevant) for q in semanlink_queries(args.split)]
        source = f"semanlink {args.split} tags"
    labelled = labelled[: args.limit]
    paths = reranker_artifacts(paths, args)
    embedder, index = open_first_stage(args, args.device, embedder_path)
    rerankers = {name: Reranker(path, device=args.device) for name, path in zip(names, paths)}
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()

    first = Pipeline(embedder, index)
    texts = [q.text for q in labelled]
    say(f"select: {len(labelled)} queries ({source}), first stage top {args.k} ...")
    results = [first.search(text, k=args.k, top_n=None) for text in texts]  # as each request will see it
    candidate_ids = [r.ids for r in results]
    documents = [[h.document for h in r.hits] for r in results]
    scores_by_model, seconds_by_model = score_with_each(rerankers, texts, documents, max(args.depths), args.quiet)
    if cascades is None:
        order = sorted(names, key=lambda n: seconds_by_model[n])
        cascades = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    configs = candidate_configs(names, sorted(args.depths), cascades)
    per_query = [{name: scores_by_model[name][q] for name in names} for q in range(len(labelled))]
    relevant = [set(q.relevant) for q in labelled]
    quality = {c: config_metrics(c, candidate_ids, per_query, relevant) for c in configs}

    sample = list(range(min(args.latency_queries, len(labelled))))
    expected = {c: [ranked_ids(c, candidate_ids[q], per_query[q]) for q in sample] for c in configs}
    pipelines = {c: Pipeline(embedder, index, rerankers=[rerankers[n] for n in c.rerankers], depths=list(c.depths))
                 if c.rerankers else first for c in configs}
    with progress_bar(total=len(configs) * len(sample), unit="request", desc="timing configurations",
                      disable=args.quiet) as bar:
        latency = measure_latency(configs, pipelines, [texts[q] for q in sample], args.k, expected, bar.update)
    points = [Point(c, quality[c]["ndcg@10"], latency[c]["p50_ms"], {**quality[c], **latency[c]}) for c in configs]
    front = mark_pareto(points)
    best = best_within(points, args.latency_budget_ms)
    report = {
        "command": "crossrank " + " ".join(sys.argv[1:]), "machine": machine_name(), "queries": len(labelled),
        "source": source, "k": args.k, "latency_queries": len(sample), "seconds": round(time.perf_counter() - started, 1),
        "rerankers": dict(zip(names, paths)), "latency_budget_ms": args.latency_budget_ms,
        "rows": [{"config": p.config.name, "rerankers": list(p.config.rerankers), "depths": list(p.config.depths),
                  **p.figures, "pareto": p.pareto} for p in points],
        "pareto_front": [p.config.name for p in front],
        "best_within_budget": best.config.name if best is not None else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_select(report))
    if args.out:
        write_select_report(Path(args.out), report, points)
    return 0


def format_select(report: dict) -> str:
    width = max(len(row["config"]) for row in report["rows"])
    lines = [f"crossrank select: {report['queries']} queries ({report['source']}), first stage top {report['k']}, "
             f"latency over {report['latency_queries']} requests per configuration; {report['machine']}; "
             f"{report['seconds']:.0f} s", "",
             f"  {'configuration':<{width}} {'nDCG@10':>8} {'MRR@10':>7} {'p50 ms':>8} {'p95 ms':>8} {'pairs/s':>8}  "]
    for row in sorted(report["rows"], key=lambda r: r["p50_ms"]):
        pairs = f"{row['pairs_per_s']:8.1f}" if row["pairs_per_s"] else f"{'-':>8}"
        flags = ("* Pareto" if row["pareto"] else "") + (" (BEST)" if row["config"] == report["best_within_budget"] else "")
        if row["ranking_mismatches"]:
            flags += f" [{row['ranking_mismatches']} rankings differ from the cached scores]"
        lines.append(f"  {row['config']:<{width}} {row['ndcg@10']:8.4f} {row['mrr@10']:7.4f} {row['p50_ms']:8.1f} "
                     f"{row['p95_ms']:8.1f} {pairs}  {flags}")
    lines.append("")
    lines.append("* on the Pareto front: no other configuration is both faster (p50) and better (nDCG@10).")
    if report["latency_budget_ms"] is not None:
        best = report["best_within_budget"]
        lines.append(f"best within p95 <= {report['latency_budget_ms']:g} ms: {best}" if best
                     else f"no configuration meets p95 <= {report['latency_budget_ms']:g} ms")
    return "\n".join(lines)


def write_select_report(out: Path, report: dict, points: list[Point]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "select.json").write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for p in points:
        ax.scatter(p.latency_ms, p.quality, s=28, color="#c33" if p.pareto else "#888",
                   marker="o" if len(p.config.rerankers) <= 1 else "s", zorder=3)
    front = sorted((p for p in points if p.pareto), key=lambda p: p.latency_ms)
    ax.plot([p.latency_ms for p in front], [p.quality for p in front], color="#c33", lw=1, zorder=2)
    for p in front:
        ax.annotate(p.config.name, (p.latency_ms, p.quality), fontsize=6, xytext=(4, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency of one request, ms (log scale)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"quality vs latency ({report['source']}); red: Pareto front, squares: cascades", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "select.png", dpi=130)
    plt.close(fig)
    (out / "select.md").write_text("# crossrank select\n\n" + f"Command: `{report['command']}`\n\n```\n"
                                   + format_select(report) + "\n```\n\n![quality vs latency](select.png)\n")


__all__ = ["candidate_configs", "parse_cascades", "read_labelled_queries", "run_select"]
