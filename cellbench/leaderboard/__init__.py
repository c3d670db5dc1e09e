"""The static leaderboard site built from ``submissions/`` (see :mod:`cellbench.leaderboard.build`)."""

from cellbench.leaderboard.build import build_leaderboard

__all__ = ["build_leaderboard"]
