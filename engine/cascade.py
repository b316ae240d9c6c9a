"""A cascade of rerankers over the caller's documents (no first stage of its own).

``Cascade([small, large], depths=[50, 10]).rerank(query, documents)`` reranks the first 50
documents (in the caller's order, e.g. a retriever's) with the small model, then the small model's
top 10 with the large one; the order is the large model's 10, then the rest of the small model's
50 in its order, then any documents beyond 50 in the caller's order, unscored (score nan; the
result's ``scored`` says how many were scored). Each document's score is the one of the last
stage that scored it. A first depth of None reranks every document. ``Pipeline(rerankers=...,
depths=...)`` is the same chain behind a first stage.
"""

from __future__ import annotations

from typing import Any, Sequence

from crossrank.errors import TokenBudgetError, check_bool, check_int, check_query, check_texts, check_top_n
from crossrank.pipeline import cascade_step, check_cascade
from crossrank.reranker import RankedDocument, Ranking, Reranker


class Cascade:
    """Rerankers in a chain with the number of documents each reranks (see the module docstring)."""

    def __init__(self, rerankers: Sequence[Reranker], depths: Sequence[int | None] | None = None):
        self.rerankers, self.depths = check_cascade(rerankers, depths)

    def describe(self) -> dict[str, Any]:
        """Each stage's model (``Reranker.describe()``) and depth (None: every document)."""
        return {"kind": "cascade", "stages": [{"depth": depth, "model": reranker.describe()}
                                              for reranker, depth in zip(self.rerankers, self.depths)]}

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = True, raw_scores: bool = False, *, max_tokens_per_doc: int | None = None,
               max_chunks_per_doc: int | None = None, return_evidence: bool = False,
               token_budget: int | None = None, instruction: str | None = None) -> Ranking:
        """Documents in the cascade's order, at most ``top_n``; the options are ``Reranker.rerank``'s,
        given to every stage (``instruction`` too; ``token_budget``: for all stages together, each stage refused before
        it runs past what the earlier ones left). ``tokens`` adds up every stage's; ``truncated``
        and ``dropped_tokens`` (and each result's ``dropped_tokens`` and ``evidence``) are those of
        the last stage that read each document."""
        query = check_query(query)
        documents = check_texts(documents)
        check_top_n(top_n)
        check_bool(return_documents, "return_documents")
        token_budget = check_int(token_budget, "token_budget", allow_none=True)
        order = list(range(len(documents)))
        last: dict[int, RankedDocument] = {}  # document -> its result from the last stage that scored it
        tokens = 0
        for stage, (reranker, depth) in enumerate(zip(self.rerankers, self.depths), start=1):
            head = order[:depth]
            left = None if token_budget is None else token_budget - tokens
            if left is not None and left < 1 and head:
                raise TokenBudgetError(f"this cascade's stages before stage {stage} ran {tokens} tokens, its whole "
                                       f"token budget ({token_budget})", tokens, token_budget)
            ranking = reranker.rerank(query, [documents[i] for i in head], return_documents=False,
                                      raw_scores=raw_scores, max_tokens_per_doc=max_tokens_per_doc,
                                      max_chunks_per_doc=max_chunks_per_doc, return_evidence=return_evidence,
                                      token_budget=left, instruction=instruction)
            for r in ranking:
                last[head[r.index]] = r._replace(index=head[r.index])
            order = cascade_step(order, depth, [r.index for r in ranking])
            tokens += ranking.tokens
        ranked = [last[i] if i in last else RankedDocument(i, float("nan"), None) for i in order[:top_n]]
        if return_documents:
            ranked = [r._replace(document=documents[r.index]) for r in ranked]
        dropped = [r.dropped_tokens for r in last.values()]
        return Ranking(ranked, scored=len(last), tokens=tokens, truncated=sum(d > 0 for d in dropped),
                       dropped_tokens=sum(dropped))


__all__ = ["Cascade"]
