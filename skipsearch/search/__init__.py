"""The search service: study configs, Optuna storage, search spaces, objective, workers."""
