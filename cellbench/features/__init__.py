"""Per-image feature extractors (Inception pool3 for FID/KID and the MoA classifier).

Kept import-free so ``import cellbench.features`` does not pull in torch; import the submodules
(``cellbench.features.inception``) where the features are needed.
"""
