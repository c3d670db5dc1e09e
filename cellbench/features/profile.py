"""The morphology profile: CellProfiler-style measurements of every cell, one vector per image.

An image's profile (``docs/scoring.md``, "Morphology profile") is computed from the masks of the
segmentation pass that feeds the rewards (no second segmentation): the nuclei and the cells of the
``classical`` backend (or of any backend's :class:`SegmentationResult`). Each object is measured,
and the image's value of a measurement is its **mean over the image's objects** (an image with no
object of a compartment gets 0 for that compartment's measurements; its count says so):

* ``Count_Nuclei``, ``Count_Cells``: the number of objects;
* per compartment (``Nuclei`` on the DNA channel, ``Cells`` on every channel), area and shape:
  ``Area`` (pixels), ``Perimeter`` (scikit-image's 4-connected estimator, the one of the
  ``roundness`` feature), ``FormFactor`` = 4 pi area / perimeter^2 (not clipped),
  ``Eccentricity``, ``MajorAxisLength`` and ``MinorAxisLength`` (of the ellipse with the same
  second moments: 4 sqrt of the eigenvalues of the pixel coordinates' covariance, as
  scikit-image's ``regionprops``);
* per compartment and channel, intensity on values / 255: ``MeanIntensity``, ``StdIntensity``
  (population) and ``IntegratedIntensity`` (sum);
* per compartment and channel, texture: the grey-level co-occurrence matrix of the object's pixel
  pairs one pixel apart (right and down neighbours, both in the object, counted both ways) on
  8 grey levels (uint8 value // 32), and of it ``Contrast`` = sum P(i,j) (i - j)^2 and
  ``InverseDifferenceMoment`` = sum P(i,j) / (1 + (i - j)^2) (an object without a pair gets
  contrast 0 and 1).

Names follow CellProfiler's ``Compartment_Category_Feature_Channel`` with the dataset card's
channel names. The compiled kernel is :mod:`cellbench.features._profile_kernels`; the numpy and
scikit-image computation it is tested against is :func:`compartment_profile_reference`.
cp-measure (the CellProfiler measurements as a library) was measured and not used: its texture
alone takes about 0.26 s per crop and channel (``docs/benchmarks.md``).
"""

from __future__ import annotations

import numpy as np

#: bumped whenever a profile value can change (part of the reference-feature cache keys)
PROFILE_VERSION = "1"
SHAPE_NAMES = (
    "AreaShape_Area",
    "AreaShape_Perimeter",
    "AreaShape_FormFactor",
    "AreaShape_Eccentricity",
    "AreaShape_MajorAxisLength",
    "AreaShape_MinorAxisLength",
)
CHANNEL_NAMES = (
    "Intensity_MeanIntensity",
    "Intensity_StdIntensity",
    "Intensity_IntegratedIntensity",
    "Texture_Contrast",
    "Texture_InverseDifferenceMoment",
)


def _compartments(n_channels: int, dna_channel: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (("Nuclei", (dna_channel,)), ("Cells", tuple(range(n_channels))))


def profile_names(channels: tuple[str, ...], dna_channel: int) -> tuple[str, ...]:
    """Names of the profile's columns for crops with channels named ``channels``."""
    names = ["Count_Nuclei", "Count_Cells"]
    for comp, chans in _compartments(len(channels), dna_channel):
        names += [f"{comp}_{s}" for s in SHAPE_NAMES]
        for k in chans:
            names += [f"{comp}_{s}_{channels[k]}" for s in CHANNEL_NAMES]
    return tuple(names)


def profile_width(n_channels: int) -> int:
    """Number of profile columns of crops with ``n_channels`` channels."""
    return len(profile_names(tuple(str(k) for k in range(n_channels)), 0))


def _counts(labels: np.ndarray) -> np.ndarray:
    flat = labels.reshape(len(labels), -1)
    return np.array([np.count_nonzero(np.bincount(row)[1:]) for row in flat], np.float64)


def profile_stack(
    images: np.ndarray, nuclei: np.ndarray, cells: np.ndarray, *, dna_channel: int
) -> np.ndarray:
    """(N, P) float64 profiles of uint8 (N, H, W, C) crops with their (N, H, W) labels.

    Columns: :func:`profile_names` of the crops' channels.
    """
    from cellbench.features._profile_kernels import N_PER_CHANNEL, N_SHAPE, compartment_profile
    from cellbench.features.segment._feature_kernels import PERIMETER_WEIGHTS

    imgs = np.ascontiguousarray(images, np.uint8)
    if imgs.ndim == 3:  # one channel: nuclei and cells on it
        imgs, dna_channel = imgs[..., None], 0
    n, _, _, n_ch = imgs.shape
    comps = _compartments(n_ch, dna_channel)
    out = np.zeros((n, 2 + sum(N_SHAPE + N_PER_CHANNEL * len(c) for _, c in comps)))
    if not n:
        return out
    labs = (np.ascontiguousarray(nuclei, np.int32), np.ascontiguousarray(cells, np.int32))
    out[:, 0] = _counts(labs[0])
    out[:, 1] = _counts(labs[1])
    col = 2
    for lab, (_, chans) in zip(labs, comps, strict=True):
        compartment_profile(lab, imgs, np.array(chans, np.int64), PERIMETER_WEIGHTS, out, col)
        col += N_SHAPE + N_PER_CHANNEL * len(chans)
    return out


def compartment_profile_reference(
    image: np.ndarray, labels: np.ndarray, chans: tuple[int, ...]
) -> np.ndarray:
    """One image's compartment columns (as :func:`profile_stack` writes them) with numpy and
    scikit-image's ``regionprops``, object by object: the test's independent computation."""
    from skimage.measure import regionprops

    rows = []
    for r in regionprops(labels):
        mask = labels == r.label
        per = r.perimeter
        row = [
            r.area,
            per,
            4 * np.pi * r.area / per**2 if per > 0 else 0.0,
            r.eccentricity,
            r.axis_major_length,
            r.axis_minor_length,
        ]
        for k in chans:
            v = image[..., k][mask] / 255.0
            q = image[..., k].astype(np.int64) // 32
            glcm = np.zeros((8, 8))
            for a, b, m in (
                (q[:, :-1], q[:, 1:], mask[:, :-1] & mask[:, 1:]),
                (q[:-1, :], q[1:, :], mask[:-1, :] & mask[1:, :]),
            ):
                np.add.at(glcm, (a[m], b[m]), 1.0)
                np.add.at(glcm, (b[m], a[m]), 1.0)
            i, j = np.indices((8, 8))
            p = glcm / glcm.sum() if glcm.sum() else glcm
            row += [
                v.mean(),
                v.std(),
                v.sum(),
                float((p * (i - j) ** 2).sum()),
                float((p / (1.0 + (i - j) ** 2)).sum()) if glcm.sum() else 1.0,
            ]
        rows.append(row)
    if not rows:
        return np.zeros(len(SHAPE_NAMES) + len(CHANNEL_NAMES) * len(chans))
    return np.asarray(rows, np.float64).mean(0)
