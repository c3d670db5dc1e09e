"""The cellpose backend's code path with random-init weights placed where it looks (no download).

Skipped where the `cellpose` extra is not installed (`pip install -e '.[cellpose]'`), except
under ``CELLBENCH_REQUIRE_CELLPOSE=1`` (`make test-cellpose`, which CI runs), where its absence fails.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CELLBENCH_REQUIRE_CELLPOSE") == "1":
    import cellpose  # noqa: F401  (the extra must be there: fail, never skip)
else:
    pytest.importorskip("cellpose")

from cellbench.errors import CellbenchError
from cellbench.features.segment import backends


def write_random_weights(folder: Path) -> dict[str, str]:
    """Random-init Cellpose networks saved under the two file names the backend loads."""
    import torch
    from cellpose.resnet_torch import CPnet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    out = {}
    for name, diam in (("nucleitorch_0", 17.0), ("cyto3", 30.0)):
        net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam)
        net.save_model(str(folder / name))
        out[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return out


@pytest.fixture
def cellpose_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shas = write_random_weights(tmp_path / "models")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    monkeypatch.setattr(backends, "_instances", {})
    return backends.get_backend("cellpose"), shas


def crops(n: int, seed: int = 0) -> np.ndarray:
    from tests.conftest import _crop

    rng = np.random.default_rng(seed)
    return np.stack([_crop(rng) for _ in range(n)])


def test_identity_names_the_weight_files(cellpose_backend):
    be, shas = cellpose_backend
    ident = be.identity()
    assert ident["name"] == "cellpose" and ident["version"].startswith("cellpose-3.1.")
    assert ident["weights"] == shas == be.weights()
    assert (ident["nucleus_diameter"], ident["cell_diameter"]) == (17.0, 40.0)


def test_batched_segmentation_equals_one_crop_at_a_time(
    cellpose_backend, monkeypatch: pytest.MonkeyPatch
):
    be, _ = cellpose_backend
    images = crops(5)
    calls: list[int] = []
    real_eval = be._nuc.eval

    def counting_eval(x, **kw):
        calls.append(len(x))
        return real_eval(x, **kw)

    monkeypatch.setattr(be._nuc, "eval", counting_eval)
    batched = be.features(images, dna_channel=2)
    assert calls == [5]  # one call for the five crops
    single = np.stack([be.features(images[i : i + 1], dna_channel=2)[0] for i in range(5)])
    assert batched.shape == (5, len(be.feature_names))
    np.testing.assert_array_equal(batched, single)
    masks = be.segment_many(images, dna_channel=2)
    assert len(masks) == 5 and masks[0].nuclei.shape == (96, 96)
    assert masks[0].nuclei.dtype == np.int32


def test_cuda_without_a_gpu_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    write_random_weights(tmp_path / "models")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    monkeypatch.setattr(backends, "_instances", {})
    with pytest.raises(CellbenchError, match="torch sees no CUDA device"):
        backends.get_backend("cellpose", "cuda")


def test_reference_statistics_record_the_weights(cellpose_backend, mini_ds):
    from cellbench.features.reference import build_reference, load_reference, save_reference

    be, shas = cellpose_backend
    doc = build_reference(mini_ds, be, split="train")
    assert doc["segmenter"]["weights"] == shas
    path = mini_ds.root / "reference_cellpose.json"
    save_reference(doc, path)
    load_reference(path, backend_identity=be.identity())
    other = {**be.identity(), "weights": {"nucleitorch_0": "0" * 64, "cyto3": "1" * 64}}
    with pytest.raises(CellbenchError, match="made with segmenter"):
        load_reference(path, backend_identity=other)
