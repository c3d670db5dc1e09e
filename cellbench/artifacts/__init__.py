"""Shared, deterministic scoring artifacts: build, digest, register, pack and fetch a set.

An *artifact set* is what a scorer reads besides the images: the reference statistics of each
segmentation backend (``reference_<backend>.json``) and the MoA classifier
(``classifier/classifier.json`` + ``classifier/classifier.safetensors``). docs/scoring.md
("Artifacts") describes how a set is built, identified, registered and published.

* :mod:`cellbench.artifacts.manifest`: each file's sha256 and the one digest of a set;
* :mod:`cellbench.artifacts.build`: ``cellbench artifacts build`` (byte-identical rebuilds);
* :mod:`cellbench.artifacts.registry`: the published sets per dataset shipped in the package;
* :mod:`cellbench.artifacts.archive`: ``cellbench artifacts pack`` and ``fetch``.

Where the scorer finds a set: :mod:`cellbench.scoring.artifacts`.
"""
