"""Metrics on generated images: FID/KID (:mod:`cellbench.metrics.fid`) and the rewards."""
