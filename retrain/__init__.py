"""Retrain stage: datasets, the collaborative-filtering model, evaluation, export and scheduling."""
