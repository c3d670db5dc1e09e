"""Scoring of generated images; :mod:`cellbench.scoring.metric` is the in-memory metric API."""
