"""Evaluation (method.md 6): exact retrieval metrics, k-reciprocal re-ranking, features to scores, pictures."""
