"""Experiment configs and example modules (``experiments.own_model`` is importable by spec)."""
