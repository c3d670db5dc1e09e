"""cellbench: benchmark toolkit and leaderboard for virtual cell image generators.

``import cellbench`` is light (no torch); heavy parts load when first used.
"""

from cellbench._version import __version__
from cellbench.errors import CellbenchError

__all__ = ["CellbenchError", "__version__"]
