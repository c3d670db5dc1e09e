"""``python -m cellbench``: the same as the ``cellbench`` command."""

from cellbench.cli.main import main

main()
