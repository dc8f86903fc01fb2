"""Evaluation: exact retrieval metrics, k-reciprocal re-ranking and ranked-list pictures (method.md 6)."""

from dsgl_cli.evaluation.metrics import RankResult, evaluate_rank
from dsgl_cli.evaluation.ranked_lists import save_ranked_lists
from dsgl_cli.evaluation.reranking import re_ranking, rerank_features

__all__ = ["RankResult", "evaluate_rank", "re_ranking", "rerank_features", "save_ranked_lists"]
