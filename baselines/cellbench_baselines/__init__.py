"""Reference generators for cellbench (registered in ``cellbench.generators``)."""
