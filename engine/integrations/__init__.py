"""crossrank inside RAG frameworks, in-process, through each framework's own reranker interface.

One module per framework, each behind its own extra; none is imported here (nor by
``import crossrank``), so a framework is only loaded when its adapter is::

    from crossrank.integrations.langchain import CrossrankRerank      # pip install 'crossrank[langchain]'
    from crossrank.integrations.llamaindex import CrossrankRerank     # pip install 'crossrank[llamaindex]'
    from crossrank.integrations.haystack import CrossrankRanker       # pip install 'crossrank[haystack]'
    from crossrank.integrations.rerankers import CrossrankRanker      # pip install 'crossrank[rerankers]'

Every adapter takes either ``model`` (an artifact folder from ``crossrank export --kind cross``)
plus Reranker options (``device``, ``threads``, ``max_length``, ``batch_tokens``,
``long_documents``, ``chunk_overlap``, ``io_binding``, ``backend``, ``precision``), or ``reranker``, an existing
``crossrank.Reranker`` to reuse. Adapters built from the same folder and options share one loaded
Reranker (see ``shared_reranker``). Scores are ``Reranker.rerank``'s, best first, ties in input
order. Rules common to all: an empty document list gives an empty result; a document without
text is scored as the empty string (it is never dropped: only ``top_n`` / ``top_k`` cuts the
list); the caller's document objects are not modified: the adapters return copies with the
score set.
"""

from __future__ import annotations

__all__: list[str] = []
