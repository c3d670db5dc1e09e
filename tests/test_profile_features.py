"""The morphology profile (cellbench.features.profile): the compiled kernel against numpy and
scikit-image object by object, the names, and the profile in the segmentation pass."""

from __future__ import annotations

import numpy as np
import pytest

from cellbench.features.profile import (
    compartment_profile_reference,
    profile_names,
    profile_stack,
    profile_width,
)
from cellbench.features.segment.classical import (
    FEATURE_NAMES,
    segment_batch,
    segment_stack,
)


def _sim_crops(n: int, seed: int) -> np.ndarray:
    from cellbench.data import sim

    rng = np.random.default_rng(seed)
    style = sim.plate_style(rng)
    moas = ["DMSO", "Aurora kinase inhibitors", "Actin disruptors", "Eg5 inhibitors", "DNA damage"]
    return np.stack([sim.render_crop(rng, moas[i % len(moas)], 1.0, style) for i in range(n)])


NAMES = profile_names(("actin", "tubulin", "dna"), 2)


def test_names_and_width() -> None:
    assert len(NAMES) == profile_width(3) == 2 + (6 + 5) + (6 + 5 * 3)
    assert len(set(NAMES)) == len(NAMES)
    assert NAMES[:3] == ("Count_Nuclei", "Count_Cells", "Nuclei_AreaShape_Area")
    assert (
        "Nuclei_Texture_Contrast_dna" in NAMES
        and "Nuclei_Intensity_MeanIntensity_actin" not in NAMES
    )
    assert "Cells_Intensity_IntegratedIntensity_tubulin" in NAMES


def test_kernel_matches_numpy_and_regionprops_on_segmented_crops() -> None:
    crops = _sim_crops(6, seed=4)
    crops[5] = 0  # an image without objects: zeros, counts 0
    seg = segment_stack(crops, dna_channel=2)
    prof = profile_stack(crops, seg.nuclei, seg.cells, dna_channel=2)
    assert prof.shape == (6, len(NAMES))
    for i in range(len(crops)):
        nuc = compartment_profile_reference(crops[i], seg.nuclei[i], (2,))
        cel = compartment_profile_reference(crops[i], seg.cells[i], (0, 1, 2))
        expect = np.concatenate(
            [[len(np.unique(seg.nuclei[i])) - 1, len(np.unique(seg.cells[i])) - 1], nuc, cel]
        )
        # the same sums in another order: float64 rounding only
        np.testing.assert_allclose(prof[i], expect, rtol=1e-9, atol=1e-12)
    assert prof[:5, 0].min() >= 1 and prof[:5, 1].min() >= 1
    np.testing.assert_array_equal(prof[5], 0.0)


def test_texture_matches_scikit_image_graycomatrix() -> None:
    """Contrast and IDM of one object against skimage's co-occurrence matrix (background pixels
    on a ninth level that is dropped)."""
    from skimage.feature import graycomatrix

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 20, 24, 1), dtype=np.uint8)
    lab = np.zeros((1, 20, 24), np.int32)
    lab[0, 3:15, 4:20] = 1
    lab[0, 9:12, 10:14] = 0  # a hole
    prof = profile_stack(img, lab, lab, dna_channel=0)
    q = np.where(lab[0] == 1, img[0, ..., 0] // 32, 8).astype(np.uint8)
    g = graycomatrix(q, [1], [0, np.pi / 2], levels=9, symmetric=True)[:8, :8, 0, :].sum(-1)
    p = g / g.sum()
    i, j = np.indices((8, 8))
    cols = {n: k for k, n in enumerate(profile_names(("x",), 0))}
    assert prof[0, cols["Nuclei_Texture_Contrast_x"]] == pytest.approx(
        (p * (i - j) ** 2).sum(), rel=1e-12
    )
    assert prof[0, cols["Nuclei_Texture_InverseDifferenceMoment_x"]] == pytest.approx(
        (p / (1 + (i - j) ** 2)).sum(), rel=1e-12
    )
    assert prof[0, cols["Nuclei_AreaShape_Area"]] == 12 * 16 - 12


def test_profile_in_the_segmentation_pass_is_batch_independent() -> None:
    crops = _sim_crops(7, seed=5)
    both = segment_batch(crops, dna_channel=2, profile=True)
    assert both.shape == (7, len(FEATURE_NAMES) + len(NAMES))
    np.testing.assert_array_equal(
        both[:, : len(FEATURE_NAMES)], segment_batch(crops, dna_channel=2)
    )
    seg = segment_stack(crops, dna_channel=2)
    np.testing.assert_array_equal(
        both[:, len(FEATURE_NAMES) :], profile_stack(crops, seg.nuclei, seg.cells, dna_channel=2)
    )
    alone = np.concatenate(
        [segment_batch(crops[k : k + 1], dna_channel=2, profile=True) for k in range(7)]
    )
    np.testing.assert_array_equal(alone, both)
    assert segment_batch(crops[:0], dna_channel=2, profile=True).shape == (0, both.shape[1])


def test_image_arrays_keep_the_profile_through_save_load_and_concat(tmp_path) -> None:
    from cellbench.scoring.arrays import ImageArrays, concat_arrays

    rng = np.random.default_rng(0)

    def part(ids: list[str], with_profile: bool = True) -> ImageArrays:
        return ImageArrays(
            task_ids=ids,
            paths=[f"{t}.npy" for t in ids],
            pixel_sha256=["0" * 64] * len(ids),
            seg=rng.normal(size=(len(ids), 6)),
            inception=None,
            profile=rng.normal(size=(len(ids), len(NAMES))) if with_profile else None,
        )

    a, b = part(["t2", "t0"]), part(["t1"])
    a.save(tmp_path / "a.npz")
    back = ImageArrays.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.profile, a.profile)
    merged = concat_arrays([back, b], {"t0": 0, "t1": 1, "t2": 2})
    assert merged.task_ids == ["t0", "t1", "t2"]
    np.testing.assert_array_equal(
        merged.profile, np.stack([a.profile[1], b.profile[0], a.profile[0]])
    )
    none = part(["t3"], with_profile=False)
    none.save(tmp_path / "n.npz")
    assert ImageArrays.load(tmp_path / "n.npz").profile is None
    assert concat_arrays([a, none], {"t0": 0, "t2": 2, "t3": 3}).profile is None
