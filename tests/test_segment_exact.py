"""The compiled nucleus pass gives the labels of the scipy / scikit-image pass it replaced, pixel for
pixel: ``bench/perf/_classical_v3_ref.py`` is ``classical.py`` frozen before the compiled kernels
(``cellbench/features/segment/_nucleus_kernels.py``), and every label, cell and feature of the
current module must equal its output on simulated crops, synthetic nuclei of 3-50 px radius (the
box-blur path of large sigmas included), real BBBC021 crops and DSB2018 images."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cellbench.features.segment import classical as fast
from tests.conftest import REPO, shared_data_or_skip


@pytest.fixture(scope="module")
def ref():
    path = REPO / "bench" / "perf" / "_classical_v3_ref.py"
    spec = importlib.util.spec_from_file_location("_classical_v3_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_classical_v3_ref"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _assert_same_segmentation(ref, crops: np.ndarray) -> None:
    a = ref.segment_stack(crops)
    b = fast.segment_stack(crops)
    np.testing.assert_array_equal(b.nuclei, a.nuclei)
    np.testing.assert_array_equal(b.cells, a.cells)
    np.testing.assert_array_equal(b.cyto_mask, a.cyto_mask)
    np.testing.assert_array_equal(fast.stack_features(b), ref.stack_features(a))


def _sim_crops(n: int, seed: int) -> np.ndarray:
    from cellbench.data import sim
    from cellbench.data.layout import MOAS

    rng = np.random.default_rng(seed)
    moas = ["DMSO", *MOAS]
    crops = []
    for i in range(n):
        style = sim.plate_style(np.random.default_rng(seed + i // 8))
        crops.append(sim.render_crop(rng, moas[i % len(moas)], float(i % 3), style))
    return np.stack(crops)


def test_simulated_crops_bit_identical(ref) -> None:
    crops = _sim_crops(48, seed=3)
    _assert_same_segmentation(ref, crops)
    assert fast.segment_stack(crops).nuclei.max() > 0
    # the radius estimate on its own, and a batch cut in two
    dna = crops[..., 2]
    np.testing.assert_array_equal(fast.estimate_radii(dna), ref.estimate_radii(dna))
    np.testing.assert_array_equal(
        fast.segment_nuclei_stack(dna[:7]), ref.segment_nuclei_stack(dna[:7])
    )


def _nuclei_image(radius: float, seed: int) -> np.ndarray:
    """Noisy elliptic nuclei of about ``radius`` px, some touching, on an uneven background."""
    rng = np.random.default_rng(seed)
    size = max(128, int(radius * 11))
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(20, 4, (size, size)) + 10 * xx / size
    step = int(2.2 * radius + 4)
    for cy in range(int(radius) + 2, size - int(radius) - 2, step):
        for cx in range(int(radius) + 2, size - int(radius) - 2, step):
            a, b = radius * rng.uniform(0.8, 1.2, size=2)
            img[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] += rng.uniform(40, 160)
    return np.clip(img, 0, 255).astype(np.float32)


@pytest.mark.parametrize("radius", [2.5, 3.5, 6, 12, 30, 50])
def test_synthetic_nuclei_every_scale_bit_identical(ref, radius: float) -> None:
    img = _nuclei_image(radius, seed=int(radius * 10))
    np.testing.assert_array_equal(fast.segment_nuclei(img), ref.segment_nuclei(img))
    # a fixed radius whose sigma exceeds 3 px takes the box-blur path
    for r in (3.4, radius):
        p_fast, p_ref = (
            replace(fast.DEFAULT_PARAMS, radius=r),
            replace(ref.DEFAULT_PARAMS, radius=r),
        )
        np.testing.assert_array_equal(
            fast.segment_nuclei(img, params=p_fast), ref.segment_nuclei(img, params=p_ref)
        )


def test_degenerate_images_bit_identical(ref) -> None:
    rng = np.random.default_rng(0)
    stack = np.stack(
        [
            np.zeros((40, 52), np.float32),  # flat
            rng.normal(10, 2, (40, 52)).astype(np.float32),  # noise
            np.full((40, 52), 200, np.float32),  # saturated
        ]
    )
    stack[2, 5:35, 5:45] = 255  # one large saturated plateau touching nothing
    blobs = _sim_crops(3, 5)[..., 2].astype(np.float32)[:, :40, :52]
    for k, bad in enumerate((np.nan, np.inf, -np.inf)):  # one bad pixel: no nucleus anywhere
        blobs[k, 7, 9] = bad
    stack = np.concatenate([stack, blobs, _sim_crops(1, 9)[..., 2].astype(np.float32)[:, :40, :52]])
    got = fast.segment_nuclei_stack(stack)
    np.testing.assert_array_equal(got, ref.segment_nuclei_stack(stack))
    assert got[3:6].max() == 0 and got[6].max() > 0


@pytest.mark.shared
def test_real_bbbc021_crops_bit_identical(ref) -> None:
    from cellbench.features.segment.convert import to_uint8_crop

    root = shared_data_or_skip("bbbc021_real", "singh_crops_68x68")
    labels = pd.read_csv(root / "crop_labels.csv").iloc[::4]  # every crop: nucleus_exactness.py
    crops = np.stack(
        [
            to_uint8_crop(np.load(root / r.class_folder / r.file_name), order=(2, 1, 0))
            for r in labels.itertuples()
        ]
    )
    _assert_same_segmentation(ref, crops)


@pytest.mark.shared
def test_dsb2018_images_bit_identical(ref) -> None:
    """A few DSB2018 images (those of bench/studies/segment_cv.py), with the default parameters
    and every cross-validation candidate."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "bench" / "studies"))
    from segment_cv import CANDIDATES

    root = shared_data_or_skip("real_seg", "dsb2018_stage1_train_subset")
    paths = sorted((root / "images").glob("*.png"))[::16]
    for path in paths:
        img = np.asarray(Image.open(path))[..., 0]
        for cand in CANDIDATES:
            got = fast.segment_nuclei(img, params=replace(fast.DEFAULT_PARAMS, **cand))
            want = ref.segment_nuclei(img, params=replace(ref.DEFAULT_PARAMS, **cand))
            np.testing.assert_array_equal(got, want, err_msg=f"{path.name} {cand}")


@pytest.mark.parametrize("f", [2, 3, 4, 8, 16, 130])
def test_block_means_equal_numpy_bit_for_bit(f: int) -> None:
    # numpy sums each row of a block pairwise (8 partial sums from 8 values on), then adds the
    # rows: the compiled kernel must follow that order to give the same float32 bits
    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(f)
    for scale in (1.0, 1e3, 1e-3):
        x = (rng.random((5, 9 * f + 3, 7 * f + 1)) * scale).astype(np.float32)
        n, h, w = x.shape
        h2, w2 = h // f, w // f
        want = x[:, : h2 * f, : w2 * f].reshape(n, h2, f, w2, f).mean((2, 4), dtype=np.float32)
        np.testing.assert_array_equal(K.block_means(x, f), want)


def test_median_radii_equal_numpy() -> None:
    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, size=(6, 40, 50)).astype(np.int32)
    labels[1] = 0  # no nucleus: inf
    labels[2][labels[2] == 3] = 0  # an absent label in the middle is not an area of 0
    labels[3] = np.where(labels[3] > 0, 1, 0)  # one nucleus (odd count)
    labels[4][labels[4] > 4] = 0  # four nuclei (even count: mean of the middle two)
    want = []
    for lab in labels:
        area = np.bincount(lab.ravel())[1:]
        area = area[area > 0]
        want.append(np.sqrt(np.median(area) / np.pi) if len(area) else np.inf)
    np.testing.assert_array_equal(K.median_radii(labels), np.array(want))


@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_watershed_equals_scikit_image_with_ties_and_signed_zeros(negate: bool, dtype) -> None:
    """The heaps (float32: packed keys; float64: value and age apart) flood exactly as
    scikit-image's: values from a few levels (so most pixels tie and the ages decide), negative
    values, -0 beside +0, markers inside and outside the mask, the mask touching the image's edge
    or not."""
    from skimage.segmentation import watershed

    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(7)
    levels = np.array([-2.5, -1.0, -0.0, 0.0, 0.25, 1.0, 3.0], np.float32)
    for trial in range(20):
        image = rng.choice(levels, size=(37, 45)).astype(dtype)
        mask = rng.random(image.shape) < 0.85
        if trial % 2:
            mask[[0, -1], :] = False  # a strip-like frame: the unpadded path
            mask[:, [0, -1]] = False
        markers = np.zeros(image.shape, np.int32)
        spots = rng.choice(image.size, size=6, replace=False)
        markers.flat[spots] = np.arange(1, 7)
        want = watershed(-image if negate else image, markers, mask=mask)
        got = K.watershed_heap(image, markers, mask, negate=negate)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.watershed_heap(image.astype(np.int32), markers, mask)


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.3])
@pytest.mark.parametrize("radius", [9.51365692, np.float64(9.51365692)])
def test_marker_strips_equal_numpy_bit_for_bit(weight: float, radius: float) -> None:
    """The compiled marker function and its quantised strip are numpy's expressions: float32 with
    a Python float radius, float64 with a numpy float64 one (as the re-segment check passes it)."""
    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(3)
    dist = (rng.random((5, 30, 40)) * 20).astype(np.float32)
    it = (rng.random((5, 30, 40)) * 300 - 20).astype(np.float32)
    fg = rng.random((5, 30, 40)) < 0.6
    top = np.array([250.0, 0.0, 17.3, -1.0, 299.9], np.float32)  # 0 and below: no foreground
    r, h = radius, 0.05
    mf = dist / r
    if weight > 0:
        inorm = np.clip(it / np.where(top > 0, top, np.inf)[:, None, None], 0.0, 1.0)
        mf = (1.0 - weight) * mf + weight * inorm
    f_want = fast._strip(mf)
    q_want = np.where(fast._strip(fg), np.floor(f_want / h), -1.0).astype(np.int32)
    f, q = K.marker_strips(dist, it, top, fg, r, weight, h)
    assert f.dtype == f_want.dtype and q.dtype == np.int32
    assert f.dtype == (np.float64 if isinstance(radius, np.float64) else np.float32)
    np.testing.assert_array_equal(f.view(np.uint8), f_want.view(np.uint8))
    np.testing.assert_array_equal(q, q_want)


def _window_extreme(x: np.ndarray, size: int, is_max: bool) -> np.ndarray:
    """The kernel's rule in numpy: rows, then columns, of each (H, W) image; per output, the
    window's values in order, each taking the place of the one kept only when strictly greater
    (smaller), scipy's "reflect" edges."""

    def reflect(j: np.ndarray, n: int) -> np.ndarray:
        j = np.mod(j, 2 * n)
        return np.where(j < n, j, 2 * n - 1 - j)

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        pos = np.arange(n) - size // 2
        cur = np.take(a, reflect(pos, n), axis=axis)
        for t in range(1, size):
            u = np.take(a, reflect(pos + t, n), axis=axis)
            cur = np.where(u > cur, u, cur) if is_max else np.where(u < cur, u, cur)
        return cur

    return along(along(x, 1), 2)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 9, 14, 40])
def test_minmax_filters_equal_scipy_and_keep_the_tie_rule(size: int) -> None:
    # the kernel writes each step to the other of two rows (not in place: a masked store): its
    # values are scipy's, and between -0 and +0 it keeps the earlier of the window (bit for bit)
    from scipy import ndimage as ndi

    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(size)
    x = rng.integers(-3, 4, size=(4, 23, 31)).astype(np.float32)  # many ties
    x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, -0.0, 0.0)
    small = np.ascontiguousarray(x[:, :5, :3])  # windows wider than the image
    for img in (x, small):
        for is_max, ref in ((True, ndi.maximum_filter), (False, ndi.minimum_filter)):
            got = K.minmax_stack(img, size, is_max)
            np.testing.assert_array_equal(got, ref(img, size=(1, size, size)))  # -0 == +0
            want = _window_extreme(img, size, is_max)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    ints = rng.integers(0, 50, size=(3, 17, 12)).astype(np.int64)
    np.testing.assert_array_equal(
        K.minmax_stack(ints, size, True), ndi.maximum_filter(ints, size=(1, size, size))
    )


@pytest.mark.parametrize("search_max", [0.0, 1024.0, np.inf])
def test_distance_transform_equals_scipy_on_both_row_methods(search_max: float) -> None:
    # search_max 0: every row by the lower envelope; inf: every row by the outward search;
    # the default mixes them row by row. The image's edge is not background (scipy's own rule).
    from scipy import ndimage as ndi

    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(0)
    fg = np.stack([rng.random((41, 67)) < p for p in (0.3, 0.7, 0.95, 0.995)])
    yy, xx = np.mgrid[:41, :67]
    fg = np.concatenate([fg, ((yy - 20) ** 2 + (xx - 30) ** 2 < 37**2)[None]])  # long rows
    got = K.edt_stack(fg, search_max)
    for img, out in zip(fg, got, strict=True):
        np.testing.assert_array_equal(out, ndi.distance_transform_edt(img).astype(np.float32))
    # no background at all: H + W everywhere
    np.testing.assert_array_equal(K.edt_stack(np.ones((1, 5, 6), bool), search_max), 11.0)


def test_fill_holes_equals_scipy() -> None:
    # union-find over the background's runs: a hole is background not 4-connected to the edge
    from scipy import ndimage as ndi

    from cellbench.features.segment import _nucleus_kernels as K

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    rr = np.hypot(yy - 20, xx - 20)
    stacks = [rng.random((6, 29, 37)) < p for p in (0.0, 0.4, 0.6, 0.75, 1.0)]
    stacks += [rng.random(shape) < 0.6 for shape in ((5, 1, 9), (5, 9, 1), (5, 2, 2))]
    stacks.append(np.stack([np.floor(rr / k) % 2 == 0 for k in (1, 2, 3)]))  # nested rings
    stacks.append(np.stack([(np.abs(yy - xx) % 4 == 0) | (np.abs(yy + xx - 39) % 4 == 0)]))
    # a U of background whose right arm alone reaches the edge: the two arms meet at the bottom
    # row, where the edge flag must pass from the later component to the earlier one
    u = np.ones((12, 14), bool)
    u[2:9, 3] = u[2:9, 9] = u[8, 3:10] = u[2, 9:] = False
    stacks += [u[None], u[None, :, ::-1], u[None, ::-1], u.T[None]]
    for stack in stacks:
        want = np.stack([ndi.binary_fill_holes(m) for m in stack])
        np.testing.assert_array_equal(K.fill_holes_stack(stack), want)


def test_otsu_equals_the_numpy_reference() -> None:
    # bins computed first in int32, counted in four partial histograms: the same threshold as
    # cells._otsu_rows, float for float; a flat image gives NaN
    from cellbench.features.segment import _nucleus_kernels as K
    from cellbench.features.segment.cells import _otsu_rows

    rng = np.random.default_rng(3)
    for scale in (1.0, 1e-3, 1e4):
        x = (rng.random((12, 29, 41)) * scale).astype(np.float32)
        x[1] = 7.0  # flat
        x[2, :20] = 0.0  # many pixels in one bin
        x[3] = np.round(x[3] * 4 / scale)  # a few levels
        want = _otsu_rows(x.reshape(len(x), -1))
        np.testing.assert_array_equal(K.otsu_stack(x), want)
        assert np.isnan(K.otsu_stack(x)[1])


@pytest.mark.parametrize("b", [2, 3, 5])
def test_block_extrema_and_upsampling_equal_numpy(b: int) -> None:
    # block extrema: a row of blocks at a time, each block's pixels in raster order (ties keep
    # the first: -0 and +0 bit for bit); the upsampling: numpy's float32 expressions, rows first
    from cellbench.features.segment import _nucleus_kernels as K
    from cellbench.features.segment.classical import _upsample

    rng = np.random.default_rng(b)
    x = rng.integers(-2, 3, size=(3, 37, 53)).astype(np.float32)
    x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, -0.0, 0.0)
    n, h, w = x.shape
    hb, wb = -(-h // b), -(-w // b)
    padded = np.pad(x, ((0, 0), (0, hb * b - h), (0, wb * b - w)), mode="edge")
    tiles = padded.reshape(n, hb, b, wb, b).transpose(0, 1, 3, 2, 4).reshape(n, hb, wb, b * b)
    for is_max in (True, False):
        want = tiles[..., 0].copy()
        for k in range(1, b * b):
            u = tiles[..., k]
            want = np.where(u > want, u, want) if is_max else np.where(u < want, u, want)
        got = K.blocks(x, b, is_max)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    a = rng.random((3, hb, wb)).astype(np.float32)
    got = _upsample(a, b, h, w)
    pos_r = np.clip((np.arange(h) + 0.5) / b - 0.5, 0.0, hb - 1)
    pos_c = np.clip((np.arange(w) + 0.5) / b - 0.5, 0.0, wb - 1)
    r0 = np.minimum(pos_r.astype(np.intp), hb - 1)
    c0 = np.minimum(pos_c.astype(np.intp), wb - 1)
    rw = (pos_r - r0).astype(np.float32)[None, :, None]
    cw = (pos_c - c0).astype(np.float32)[None, None, :]
    rows = a[:, r0] * (np.float32(1) - rw) + a[:, np.minimum(r0 + 1, hb - 1)] * rw
    want = rows[:, :, c0] * (np.float32(1) - cw) + rows[:, :, np.minimum(c0 + 1, wb - 1)] * cw
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
