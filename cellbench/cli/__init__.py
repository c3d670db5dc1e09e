"""The ``cellbench`` command line."""
