"""RAG framework adapters (crossrank.integrations) against the real frameworks, on Semanlink texts,
with the shipped trained starter reranker exported to fp32.

Each framework's own pipeline (LangChain ContextualCompressionRetriever, LlamaIndex
RetrieverQueryEngine, Haystack Pipeline with BM25, rerankers RankedResults) must give the same
order and scores as ``crossrank.Reranker.rerank`` on the texts its first stage returned. Tests of
one framework skip only when that framework is not installed (``make test`` installs them all).
Nothing here calls an LLM or the network: Haystack's telemetry is switched off below.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # before haystack is imported: no network

import crossrank
from crossrank.evaluation.datasets import load_semanlink

STARTER = Path(__file__).resolve().parent.parent / "models" / "starter-reranker"
FRAMEWORKS = ("langchain", "llamaindex", "haystack", "rerankers")
REQUIRES = {  # framework -> modules its adapter and tests import, and the extra that installs them
    "langchain": (("langchain_core", "langchain_classic"), "langchain"),
    "llamaindex": (("llama_index.core",), "llamaindex"),
    "haystack": (("haystack",), "haystack"),
    "rerankers": (("rerankers",), "rerankers"),
}
QUERIES = ("Attention + Knowledge Graphs", "Bayesian Deep Learning")  # Semanlink test-split tags
TOP_N = 5


def need(framework: str):
    """The adapter module for ``framework``; skips the test when the framework is not installed."""
    modules, extra = REQUIRES[framework]
    for module in modules:
        pytest.importorskip(module, reason=f"{framework} is not installed: pip install 'crossrank[{extra}]'")
    import importlib

    return importlib.import_module(f"crossrank.integrations.{framework}")


@pytest.fixture(scope="module")
def starter_fp32(tmp_path_factory) -> Path:
    from crossrank.export import export_model

    out = tmp_path_factory.mktemp("integrations") / "starter-fp32"
    export_model(STARTER, out, kind="cross", precision="fp32", quiet=True)
    return out


@pytest.fixture(scope="module")
def reference(starter_fp32) -> crossrank.Reranker:
    """A plain Reranker of its own (not the adapters' shared one): the scores to match."""
    return crossrank.Reranker(starter_fp32)


@pytest.fixture(scope="module")
def semanlink():
    """(queries, corpus): two test-split tags and a corpus of their documents plus 20 others."""
    documents, queries = load_semanlink()
    by_text = {q.text: q for q in queries}
    chosen = [by_text[text] for text in QUERIES]
    relevant = set().union(*(q.relevant for q in chosen))
    others = [d for d in documents if d.id not in relevant]
    corpus = [d for d in documents if d.id in relevant] + random.Random(0).sample(others, 20)
    random.Random(1).shuffle(corpus)
    return [q.text for q in chosen], corpus


def expected(reference, query, texts, top_n):
    """``reference.rerank(query, texts, top_n)`` as (index, score) pairs (each list ranked once
    per Reranker: the full ranking is kept on the Reranker object, and cut to top_n)."""
    rankings = reference.__dict__.setdefault("_test_rankings", {})
    key = (query, tuple(texts))
    if key not in rankings:
        rankings[key] = [(r.index, r.score) for r in reference.rerank(query, texts)]
    return rankings[key][:top_n]


def assert_same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]):
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


# -- one call per framework: texts in, (position in texts, score) out, through the adapter ------

def rank_with(framework: str, query: str, texts: list[str | None], top_n: int | None, **adapter_args):
    """Ranks ``texts`` with ``framework``'s adapter built from ``adapter_args`` (model= or
    reranker=, options); each document carries its position in metadata to map results back."""
    module = need(framework)
    if framework == "langchain":
        from langchain_core.documents import Document

        docs = [Document(page_content=t, metadata={"position": i}) for i, t in enumerate(texts)]
        out = module.CrossrankRerank(top_n=top_n, **adapter_args).compress_documents(docs, query)
        return [(d.metadata["position"], d.metadata["relevance_score"]) for d in out]
    if framework == "llamaindex":
        from llama_index.core.schema import NodeWithScore, TextNode

        nodes = [NodeWithScore(node=TextNode(text=t, metadata={"position": i})) for i, t in enumerate(texts)]
        out = module.CrossrankRerank(top_n=top_n, **adapter_args).postprocess_nodes(nodes, query_str=query)
        return [(n.node.metadata["position"], n.score) for n in out]
    if framework == "haystack":
        from haystack import Document

        docs = [Document(content=t, meta={"position": i}) for i, t in enumerate(texts)]
        out = module.CrossrankRanker(top_k=top_n, **adapter_args).run(query=query, documents=docs)["documents"]
        return [(d.meta["position"], d.score) for d in out]
    from rerankers import Document

    docs = [Document(text=t, doc_id=i) for i, t in enumerate(texts)]
    model = adapter_args.pop("model", None)  # rerankers' name for it: model_name_or_path
    results = module.CrossrankRanker(model, **adapter_args).rank(query, docs)
    kept = results.results if top_n is None else results.top_k(top_n)
    return [(r.document.doc_id, r.score) for r in kept]


# -- every framework ------------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_adapter_ranks_like_the_reranker(framework, starter_fp32, reference, semanlink):
    queries, corpus = semanlink
    texts = [d.text for d in corpus]
    for top_n in (TOP_N, None):
        got = rank_with(framework, queries[0], texts, top_n, model=starter_fp32)
        assert_same_ranking(got, expected(reference, queries[0], texts, top_n))
    assert len(got) == len(texts)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_empty_input_gives_an_empty_result(framework, starter_fp32):
    assert rank_with(framework, "knowledge graphs", [], TOP_N, model=starter_fp32) == []
    assert rank_with(framework, "knowledge graphs", [], None, model=starter_fp32) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_top_n_larger_than_the_input_keeps_every_document(framework, starter_fp32, reference, semanlink):
    queries, corpus = semanlink
    texts = [d.text for d in corpus[:3]]
    got = rank_with(framework, queries[1], texts, 50, model=starter_fp32)
    assert_same_ranking(got, expected(reference, queries[1], texts, None))
    assert len(got) == 3


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_documents_with_empty_text_are_scored_as_empty_strings_and_kept(framework, starter_fp32, reference,
                                                                        semanlink):
    queries, corpus = semanlink
    texts = [corpus[0].text, "", corpus[1].text, "   "]
    if framework == "haystack":
        texts.append(None)  # a Haystack Document may have no content at all (e.g. a blob)
    got = rank_with(framework, queries[0], texts, None, model=starter_fp32)
    want = expected(reference, queries[0], [t or "" for t in texts], None)
    assert_same_ranking(got, want)
    assert sorted(i for i, _ in got) == list(range(len(texts)))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_reranker_options_reach_the_reranker(framework, starter_fp32, semanlink):
    """long_documents="chunk" with a 64-token window: long Semanlink texts are scored by their best
    window, as a Reranker built with the same options scores them, and unlike truncation."""
    queries, corpus = semanlink
    texts = sorted((d.text for d in corpus), key=len)[-6:]  # the longest: several windows each
    options = {"max_length": 64, "long_documents": "chunk"}
    chunked = crossrank.Reranker(starter_fp32, **options)
    got = rank_with(framework, queries[0], texts, None, model=starter_fp32, **options)
    assert_same_ranking(got, expected(chunked, queries[0], texts, None))
    truncated = expected(crossrank.Reranker(starter_fp32, max_length=64), queries[0], texts, None)
    assert dict(got) != pytest.approx(dict(truncated), abs=1e-4)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_adapters_share_one_reranker_or_use_the_given_one(framework, starter_fp32, reference, semanlink):
    module = need(framework)
    cls = module.CrossrankRerank if framework in ("langchain", "llamaindex") else module.CrossrankRanker
    if framework == "rerankers":
        first, second = cls(starter_fp32), cls(str(starter_fp32))
    else:
        first, second = cls(model=starter_fp32), cls(model=str(starter_fp32))
    assert first.reranker is second.reranker  # loaded once for one folder + options
    assert cls(reranker=reference).reranker is reference
    queries, corpus = semanlink
    texts = [d.text for d in corpus[:8]]
    assert_same_ranking(rank_with(framework, queries[1], texts, 3, reranker=reference),
                        expected(reference, queries[1], texts, 3))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bad_arguments_are_named(framework, starter_fp32, reference):
    module = need(framework)
    cls = module.CrossrankRerank if framework in ("langchain", "llamaindex") else module.CrossrankRanker
    with pytest.raises(ValueError, match="model=.*reranker="):
        cls()
    with pytest.raises(ValueError, match="not both"):
        cls(starter_fp32, reranker=reference)
    with pytest.raises(ValueError, match="would be ignored"):
        cls(reranker=reference, long_documents="chunk")
    with pytest.raises(TypeError, match="unknown Reranker option.*'batch_size'"):
        cls(starter_fp32, batch_size=8)
    if framework != "rerankers":  # rerankers has no top_n: results.top_k(k) cuts
        name = "top_k" if framework == "haystack" else "top_n"
        with pytest.raises(ValueError, match=f"{name} must be a positive int or None.*got 0"):
            cls(starter_fp32, **{name: 0})


# -- LangChain ------------------------------------------------------------------------------

def _langchain_retriever(corpus, k: int = 20):
    """A first stage of LangChain's own kind: a BaseRetriever returning the k Documents that share
    the most words with the query (ties in corpus order)."""
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class TermOverlapRetriever(BaseRetriever):
        documents: list
        k: int

        def _get_relevant_documents(self, query, *, run_manager):
            words = set(re.findall(r"\w+", query.lower()))
            overlap = [len(words & set(re.findall(r"\w+", d.page_content.lower()))) for d in self.documents]
            order = sorted(range(len(self.documents)), key=lambda i: -overlap[i])
            return [self.documents[i] for i in order[: self.k]]

    documents = [Document(page_content=d.text, id=d.id, metadata={"url": d.id, "tags": list(d.tags)})
                 for d in corpus]
    return TermOverlapRetriever(documents=documents, k=k)


def test_langchain_contextual_compression_retriever(starter_fp32, reference, semanlink):
    module = need("langchain")
    from langchain_classic.retrievers import ContextualCompressionRetriever

    queries, corpus = semanlink
    first_stage = _langchain_retriever(corpus)
    pipeline = ContextualCompressionRetriever(base_compressor=module.CrossrankRerank(starter_fp32, top_n=TOP_N),
                                              base_retriever=first_stage)
    for query in queries:
        retrieved = first_stage.invoke(query)
        snapshot = [(d.id, dict(d.metadata)) for d in retrieved]
        got = pipeline.invoke(query)
        want = expected(reference, query, [d.page_content for d in retrieved], TOP_N)
        assert [d.id for d in got] == [retrieved[i].id for i, _ in want]
        assert [d.metadata["relevance_score"] for d in got] == pytest.approx([s for _, s in want], abs=1e-6)
        before = dict(snapshot)  # other metadata kept; the retriever's own Documents left as they were
        assert all({k: v for k, v in d.metadata.items() if k != "relevance_score"} == before[d.id] for d in got)
        assert [(d.id, d.metadata) for d in retrieved] == snapshot
        assert all("relevance_score" not in d.metadata for d in first_stage.documents)
    assert [(d.id, d.metadata) for d in asyncio.run(pipeline.ainvoke(query))] == [(d.id, d.metadata) for d in got]


def test_langchain_async_compression_matches_sync(starter_fp32, semanlink):
    module = need("langchain")
    from langchain_core.documents import Document

    queries, corpus = semanlink
    docs = [Document(page_content=d.text, metadata={"url": d.id}) for d in corpus[:12]]
    compressor = module.CrossrankRerank(starter_fp32, top_n=4)

    async def both():
        return await asyncio.gather(*(compressor.acompress_documents(docs, q) for q in queries))

    for query, got in zip(queries, asyncio.run(both())):
        assert got == list(compressor.compress_documents(docs, query))
    assert asyncio.run(compressor.acompress_documents([], queries[0])) == []


# -- LlamaIndex -----------------------------------------------------------------------------

def test_llamaindex_query_engine_without_an_llm(starter_fp32, reference, semanlink):
    module = need("llamaindex")
    from llama_index.core import SummaryIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.schema import TextNode

    queries, corpus = semanlink
    tags = {d.id: d.tags for d in corpus}
    index = SummaryIndex([TextNode(text=d.text, id_=d.id, metadata={"tags": list(d.tags)}) for d in corpus])
    retriever = index.as_retriever()
    rerank = module.CrossrankRerank(starter_fp32, top_n=TOP_N)
    # NoText returns the retrieved nodes without generating: MockLLM is only its required placeholder.
    engine = RetrieverQueryEngine(retriever=retriever, response_synthesizer=NoText(llm=MockLLM()),
                                  node_postprocessors=[rerank])
    for query in queries:
        retrieved = retriever.retrieve(query)
        want = expected(reference, query, [n.node.get_content() for n in retrieved], TOP_N)
        responses = [engine.query(query)] + ([asyncio.run(engine.aquery(query))] if query == queries[0] else [])
        for response in responses:
            got = response.source_nodes
            assert [n.node.node_id for n in got] == [retrieved[i].node.node_id for i, _ in want]
            assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=1e-6)
            assert all(n.node.metadata == {"tags": list(tags[n.node.node_id])} for n in got)


def test_llamaindex_keeps_the_given_nodes_and_round_trips(starter_fp32, reference, semanlink):
    module = need("llamaindex")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    queries, corpus = semanlink
    nodes = [NodeWithScore(node=TextNode(text=d.text, id_=d.id), score=0.5) for d in corpus[:10]]
    rerank = module.CrossrankRerank(starter_fp32, top_n=3, long_documents="chunk", max_length=128)
    got = rerank.postprocess_nodes(nodes, QueryBundle(queries[0]))
    assert all(n.score == 0.5 for n in nodes)  # retrieval scores of the given nodes untouched
    assert {id(n.node) for n in got} <= {id(n.node) for n in nodes}  # same nodes, new NodeWithScore
    for rebuilt in (module.CrossrankRerank.from_dict(rerank.to_dict()),
                    module.CrossrankRerank.from_json(rerank.to_json())):
        assert rebuilt.to_dict() == rerank.to_dict()
        assert rebuilt.reranker is rerank.reranker  # same folder + options: the shared Reranker
        assert [(n.node.node_id, n.score) for n in rebuilt.postprocess_nodes(nodes, query_str=queries[0])] == \
            [(n.node.node_id, n.score) for n in got]
    described = module.CrossrankRerank(reranker=reference).to_dict()  # built from a Reranker: rebuildable
    assert described["model"] == str(starter_fp32) and described["max_length"] == reference.max_length
    with pytest.raises(ValueError, match="needs the query"):
        rerank.postprocess_nodes(nodes)


# -- Haystack -------------------------------------------------------------------------------

def _haystack_pipeline(module, corpus, model, top_k):
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    store = InMemoryDocumentStore()
    store.write_documents([Document(id=d.id, content=d.text, meta={"tags": list(d.tags)}) for d in corpus])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=20))
    pipeline.add_component("ranker", module.CrossrankRanker(model=model, top_k=top_k))
    pipeline.connect("retriever.documents", "ranker.documents")
    return pipeline


def _run(pipeline, query, **ranker_args):
    out = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query, **ranker_args}},
                       include_outputs_from={"retriever"})
    return out["retriever"]["documents"], out["ranker"]["documents"]


def test_haystack_bm25_pipeline(starter_fp32, reference, semanlink):
    module = need("haystack")
    queries, corpus = semanlink
    pipeline = _haystack_pipeline(module, corpus, starter_fp32, TOP_N)
    tags, texts = {d.id: d.tags for d in corpus}, {d.id: d.text for d in corpus}
    for query in queries:
        retrieved, got = _run(pipeline, query)
        want = expected(reference, query, [d.content for d in retrieved], TOP_N)
        assert [d.id for d in got] == [retrieved[i].id for i, _ in want]
        assert [d.score for d in got] == pytest.approx([s for _, s in want], abs=1e-6)
        assert all(d.meta == {"tags": list(tags[d.id])} and d.content == texts[d.id] for d in got)
        alone = pipeline.get_component("retriever").run(query=query)["documents"]
        assert [(d.id, d.score) for d in retrieved] == [(d.id, d.score) for d in alone]  # BM25 scores untouched
    retrieved, got = _run(pipeline, queries[0], top_k=2)  # top_k at run time overrides the component's
    assert [d.id for d in got] == [retrieved[i].id for i, _ in expected(reference, queries[0],
                                                                         [d.content for d in retrieved], 2)]


def test_haystack_warm_up_and_serialisation_round_trip(starter_fp32, reference, semanlink):
    module = need("haystack")
    from haystack import Pipeline

    ranker = module.CrossrankRanker(model=starter_fp32, top_k=3, long_documents="chunk")
    assert ranker._reranker is None  # nothing loaded before warm_up
    ranker.warm_up()
    assert ranker.reranker.long_documents == "chunk"
    rebuilt = module.CrossrankRanker.from_dict(ranker.to_dict())
    assert rebuilt.to_dict() == ranker.to_dict() and rebuilt.reranker is ranker.reranker

    queries, corpus = semanlink
    pipeline = _haystack_pipeline(module, corpus, starter_fp32, TOP_N)
    text = pipeline.dumps()
    try:  # Haystack 3 loads only modules on its allowlist; 2.x has no allowlist
        loaded = Pipeline.loads(text, allowed_modules=["crossrank.integrations.haystack"])
    except TypeError:
        loaded = Pipeline.loads(text)
    assert loaded.dumps() == text
    for query in queries:
        assert [(d.id, d.score) for d in _run(loaded, query)[1]] == [(d.id, d.score) for d in _run(pipeline, query)[1]]
    described = module.CrossrankRanker(reranker=reference).to_dict()["init_parameters"]
    # machine-dependent settings are saved only when chosen: another machine uses its own defaults
    assert described["model"] == str(starter_fp32) and described["batch_tokens"] is None
    assert described["threads"] is None and described["max_length"] == reference.max_length
    tuned = crossrank.Reranker(starter_fp32, batch_tokens=1024)
    assert module.CrossrankRanker(reranker=tuned).to_dict()["init_parameters"]["batch_tokens"] == 1024


# -- rerankers (AnswerDotAI) ----------------------------------------------------------------

def test_rerankers_ranked_results(starter_fp32, reference, semanlink):
    module = need("rerankers")
    from rerankers import Document
    from rerankers.models.ranker import BaseRanker
    from rerankers.results import RankedResults

    queries, corpus = semanlink
    ranker = module.CrossrankRanker(starter_fp32)
    assert isinstance(ranker, BaseRanker)
    texts, ids = [d.text for d in corpus], [d.id for d in corpus]
    for query in queries:
        want = expected(reference, query, texts, None)
        results = ranker.rank(query, texts, doc_ids=ids)
        assert isinstance(results, RankedResults) and results.has_scores and results.query == query
        assert [(r.document.doc_id, r.score, r.rank) for r in results] == \
            [(ids[i], pytest.approx(s, abs=1e-6), rank) for rank, (i, s) in enumerate(want, start=1)]
        assert [r.doc_id for r in results.top_k(TOP_N)] == [ids[i] for i, _ in want[:TOP_N]]
        assert results.get_score_by_docid(ids[want[0][0]]) == pytest.approx(want[0][1], abs=1e-6)
    async_results = asyncio.run(ranker.rank_async(query, texts, doc_ids=ids))
    assert [(r.doc_id, r.score) for r in async_results] == [(r.doc_id, r.score) for r in results]
    assert ranker.score(queries[0], texts[0]) == pytest.approx(float(reference.score([(queries[0], texts[0])])[0]),
                                                              abs=1e-6)
    given = [Document(text=d.text, doc_id=d.id, metadata={"tags": list(d.tags)}) for d in corpus[:5]]
    results = ranker.rank(queries[0], given, doc_ids=list(range(5)))  # ids overridden on copies only
    assert sorted(r.doc_id for r in results) == list(range(5)) and [d.doc_id for d in given] == ids[:5]
    assert all(r.metadata == {"tags": list(corpus[r.doc_id].tags)} for r in results)
    with pytest.raises(ValueError, match="doc_ids has 2 entries for 5 documents"):
        ranker.rank(queries[0], given, doc_ids=[1, 2])


# -- packaging ------------------------------------------------------------------------------

def test_import_crossrank_loads_no_adapter_and_no_framework():
    code = ("import sys, crossrank, crossrank.integrations; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'langchain_classic', "
            "'llama_index', 'haystack', 'rerankers', 'torch') or m.startswith('crossrank.integrations.')]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
