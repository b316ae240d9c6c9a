"""Fidelity of an exported graph against the PyTorch model it came from, on real text.

The sample is fixed: Semanlink tags as queries, each with some of its own documents and some
random others (deterministic). Both sides see the same token ids, so the figures measure the
graph (fusions, heads, quantization), not tokenization.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrank.errors import InvalidArgumentError
from crossrank.evaluation.metrics import spearman, top_k_agreement
from crossrank.certificate import BARS as CERTIFICATE_BARS, meets_bar
from crossrank.session import build_session

SAMPLE_QUERIES = 12
DOCS_PER_QUERY = 20
RELEVANT_PER_QUERY = 5
BATCH_SIZE = 16
ALONE_ROWS = 32  # rows re-run alone (no padding, no batch mates) for the batch-invariance figure

# The bars (crossrank.certificate.BARS: the export's per precision, and bf16's for certificates);
# below a bar the export fails unless --allow-low-fidelity.
BARS = CERTIFICATE_BARS


@dataclass(frozen=True)
class FidelitySample:
    source: str
    queries: list[str]
    documents: list[list[str]]   # documents[i] belong to queries[i]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(q, d) for q, docs in zip(self.queries, self.documents) for d in docs]

    @property
    def texts(self) -> list[str]:
        return [d for docs in self.documents for d in docs]


def semanlink_sample(n_queries: int = SAMPLE_QUERIES) -> FidelitySample:
    from crossrank.evaluation.datasets import load_semanlink

    documents, queries = load_semanlink()
    by_id = {doc.id: doc for doc in documents}
    all_ids = sorted(by_id)
    candidates = sorted(
        (q for q in queries if len(q.relevant) >= RELEVANT_PER_QUERY),
        key=lambda q: hashlib.sha1(q.tag.encode()).hexdigest(),
    )[:n_queries]
    rng = random.Random(0)
    texts_per_query = []
    for query in candidates:
        relevant = sorted(query.relevant)[:RELEVANT_PER_QUERY]
        others = [i for i in rng.sample(all_ids, DOCS_PER_QUERY * 2) if i not in query.relevant]
        chosen = relevant + others[: DOCS_PER_QUERY - len(relevant)]
        texts_per_query.append([by_id[i].text for i in chosen])
    return FidelitySample("semanlink (cherche==2.2.1)", [q.text for q in candidates], texts_per_query)


def jsonl_sample(path: str | Path) -> FidelitySample:
    """User text: JSONL lines of {"query": str, "documents": [str, ...]}."""
    from crossrank.evaluation.datasets import read_jsonl

    queries, documents = [], []
    for where, _, row in read_jsonl(path, "fidelity data file", ("query", "documents")):
        if not isinstance(row["documents"], list):
            raise InvalidArgumentError(f'{where}: "documents" must be a list of strings')
        queries.append(str(row["query"]))
        documents.append([str(d) for d in row["documents"]])
    if sum(len(d) for d in documents) < 1:
        raise InvalidArgumentError(f"{path}: no documents found")
    return FidelitySample(str(path), queries, documents)


def _batches(n: int, size: int = BATCH_SIZE):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _encode(hf_tokenizer, first, second, max_length, graph_inputs):
    """Padded ids of texts or pairs, only the inputs the graph takes (the PyTorch model gets the same)."""
    kwargs = dict(padding=True, max_length=max_length, return_tensors="np")
    if second is None:
        encoded = hf_tokenizer(first, truncation=True, **kwargs)
    else:
        encoded = hf_tokenizer(first, second, truncation="only_second", **kwargs)
    return {k: v.astype(np.int64) for k, v in encoded.items() if k in graph_inputs}


def _onnx_outputs(session, feeds: dict) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v.astype(np.int64) for k, v in feeds.items() if k in names}
    return session.run(None, feeds)[0]


class _AloneCheck:
    """Batch invariance on the fidelity sample: the first ALONE_ROWS rows, each run alone without
    padding, against the same rows' outputs in their padded batches of BATCH_SIZE."""

    def __init__(self, session):
        self.session = session
        self.batched: list[np.ndarray] = []
        self.alone: list[np.ndarray] = []

    def add(self, feeds: dict, batched: np.ndarray) -> None:
        for row in range(len(batched)):
            if len(self.alone) >= ALONE_ROWS:
                return
            length = int(feeds["attention_mask"][row].sum())
            single = {k: v[row:row + 1, :length] for k, v in feeds.items()}
            self.alone.append(_onnx_outputs(self.session, single)[0])
            self.batched.append(batched[row])

    @property
    def max_abs_diff(self) -> float:
        return float(np.max(np.abs(np.asarray(self.alone, np.float64) - np.asarray(self.batched, np.float64))))


def measure_fidelity(source, onnx_path: Path, sample: FidelitySample, max_length: int, session=None) -> dict:
    """Run the PyTorch model and the ONNX graph on the same ids; return the agreement figures.
    Decoder rerankers: the model card's computation against the runtime's own pair building
    (``_decoder_fidelity``). session: the session to measure (default: ONNX Runtime on CPU;
    ``crossrank certify`` passes another backend's or precision's, built by
    crossrank.session.build_session)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    if source.template is not None:
        return _decoder_fidelity(source, onnx_path, sample, max_length, session)
    tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    session = build_session(onnx_path, device="cpu") if session is None else session
    graph_inputs = {i.name for i in session.get_inputs()}
    torch.manual_seed(0)
    with torch.inference_mode():
        if source.kind == "cross":
            model = AutoModelForSequenceClassification.from_pretrained(source.path).eval()
            pairs = sample.pairs
            ref, got = [], []
            alone = _AloneCheck(session)
            for part in _batches(len(pairs)):
                qs = [p[0] for p in pairs[part]]
                ds = [p[1] for p in pairs[part]]
                feeds = _encode(tokenizer, qs, ds, max_length, graph_inputs)
                logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.double().numpy()
                ref.append(logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0])
                got.append(_onnx_outputs(session, feeds).astype(np.float64))
                alone.add(feeds, got[-1])
            figures = cross_figures(np.concatenate(ref), np.concatenate(got), [len(d) for d in sample.documents],
                                    sample.source)
            return {**figures, "batch_invariance_max_abs_diff": alone.max_abs_diff}
        model = AutoModel.from_pretrained(source.path).eval()
        texts = sample.queries + sample.texts
        ref, got = [], []
        alone = _AloneCheck(session)
        for part in _batches(len(texts)):
            feeds = _encode(tokenizer, texts[part], None, max_length, graph_inputs)
            hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.double()
            mask = torch.from_numpy(feeds["attention_mask"]).double().unsqueeze(-1)
            if source.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if source.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            ref.append(pooled.numpy())
            got.append(_onnx_outputs(session, feeds).astype(np.float64))
            alone.add(feeds, got[-1])
        figures = bi_figures(np.concatenate(ref), np.concatenate(got), len(sample.queries), sample.source)
        return {**figures, "batch_invariance_max_abs_diff": alone.max_abs_diff}


def model_card_scores(model, hf_tokenizer, template: dict, pairs: list[tuple[str, str]], max_length: int,
                      instruction: str | None = None) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """A decoder yes/no reranker's model-card computation, in PyTorch: the prompt's ids
    (``prompts.reference_ids``), left-padded as the card pads them, the logits at the last position,
    log-softmax over [no, yes]. Returns (logit_yes - logit_no, P(yes), the ids) per pair, float64."""
    import torch

    from .prompts import reference_ids

    ids = [reference_ids(hf_tokenizer, template, q, d, max_length, instruction) for q, d in pairs]
    width = max(len(row) for row in ids)
    pad = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    with torch.inference_mode():
        last = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
        pair_logits = torch.stack([last[:, template["no_id"]], last[:, template["yes_id"]]], dim=1).double()
        log_probs = torch.nn.functional.log_softmax(pair_logits, dim=1)
    return (log_probs[:, 1] - log_probs[:, 0]).numpy(), log_probs[:, 1].exp().numpy(), ids


def _decoder_fidelity(source, onnx_path: Path, sample: FidelitySample, max_length: int, session=None) -> dict:
    """ONNX graph on the runtime's own rows (``crossrank.tokenize.PromptTokenizer``, right padding)
    against ``model_card_scores``; also the share of pairs whose runtime ids equal the card's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crossrank.batching import assemble_batch
    from crossrank.tokenize import PromptTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    runtime = PromptTokenizer(onnx_path.parent / "tokenizer.json", max_length, source.template)
    session = build_session(onnx_path, device="cpu") if session is None else session
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    pairs = sample.pairs
    ref, ref_prob, got, same_ids = [], [], [], 0
    alone = _AloneCheck(session)
    for part in _batches(len(pairs)):
        batch = pairs[part]
        logit, prob, card_ids = model_card_scores(model, hf_tokenizer, source.template, batch, max_length)
        queries = sorted({q for q, _ in batch})
        rows = runtime.pair_rows(runtime.encode_queries(queries), np.asarray([queries.index(q) for q, _ in batch]),
                                 runtime.encode_documents([d for _, d in batch])[0])
        same_ids += sum(list(row) == card for row, card in zip(rows.ids, card_ids))
        padded = assemble_batch(np.arange(len(batch)), rows.ids, rows.types, runtime.pad_id)
        feeds = {"input_ids": padded.input_ids, "attention_mask": padded.attention_mask}
        ref.append(logit)
        ref_prob.append(prob)
        got.append(_onnx_outputs(session, feeds).astype(np.float64))
        alone.add(feeds, got[-1])
    ref_all, got_all = np.concatenate(ref), np.concatenate(got)
    figures = cross_figures(ref_all, got_all, [len(d) for d in sample.documents], sample.source)
    probability = 1.0 / (1.0 + np.exp(-got_all))
    return {**figures, "batch_invariance_max_abs_diff": alone.max_abs_diff,
            "max_abs_diff_probability": float(np.max(np.abs(np.concatenate(ref_prob) - probability))),
            "prompt_ids_agreement": same_ids / len(pairs),
            "reference": "model card: log_softmax over [no, yes] logits at the last position, left padding"}


def cross_figures(ref: np.ndarray, got: np.ndarray, group_sizes: list[int], source: str) -> dict:
    bounds = np.cumsum([0] + group_sizes)
    groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return {
        "sample": source, "pairs": int(len(ref)),
        "max_abs_diff": float(np.max(np.abs(ref - got))),
        "spearman": spearman(ref, got),
        "mean_query_spearman": float(np.mean([spearman(ref[g], got[g]) for g in groups])),
        "top10_agreement": float(np.mean([top_k_agreement(ref[g], got[g], 10) for g in groups])),
        "reference_score_std": float(np.std(ref)),
    }


def bi_figures(ref: np.ndarray, got: np.ndarray, n_queries: int, source: str) -> dict:
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    ref_q, ref_d = ref[:n_queries], ref[n_queries:]
    got_q, got_d = got[:n_queries], got[n_queries:]
    agreement = [top_k_agreement(ref_d @ rq, got_d @ gq, 10) for rq, gq in zip(ref_q, got_q)]
    return {
        "sample": source, "texts": int(len(ref)),
        "max_abs_diff": float(np.max(np.abs(ref - got))),
        "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
        "top10_agreement": float(np.mean(agreement)),
    }


def check_bar(kind: str, precision: str, figures: dict, bars: dict | None = None) -> tuple[bool, str]:
    """(passed, a sentence): ``figures`` against the bar for ``precision`` (``bars``: a family's
    own, over crossrank.certificate.BARS). A decoder reranker must also build the model card's ids
    for every pair."""
    ok, _, verdict = meets_bar(kind, precision, figures, bars)
    agreement = figures.get("prompt_ids_agreement")
    if agreement is not None:
        ok = ok and agreement == 1.0
        verdict += f"; prompt_ids_agreement = {agreement:.6g} (bar: == 1)"
    return ok, verdict
