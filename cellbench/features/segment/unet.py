"""The learned nucleus model of the ``unet`` backend: a small U-Net trained in the project.

Inference (:func:`segment_nuclei_stack`):

1. each DNA image gets its nucleus radius ``r`` from the classical scale estimate
   (:func:`cellbench.features.segment.classical.estimate_radii`, never the ground truth), and is
   resized by ``CANONICAL_RADIUS / r`` so that its nuclei have about ``CANONICAL_RADIUS`` px of
   radius, which the network's receptive field fits (nucleus radii of about 3 to 50 px become
   one size); factors are rounded to a geometric grid (2^(1/8)) so that crops of one size and
   one rounded radius share a forward pass;
2. the image is normalised on its own (0.5 and 99.8 percentiles to 0 and 1);
3. the network gives three classes per pixel: background, nucleus interior, nucleus border (the
   pixels of a nucleus beside another label or the background);
4. the class probabilities are resized back to the image's own size (bilinear); the nuclei are a
   seeded watershed of -P(interior) inside P(background) < 0.5, seeded by the connected regions
   of P(interior) > 0.5; seeds and nuclei smaller than ``MIN_AREA`` canonical px (scaled to the
   image) are dropped.

The network (:class:`TinyUNet`): three 2x down-steps, two 3x3 convolutions with batch
normalisation and ReLU per level, widths ``WIDTHS``, bilinear up-steps with skip connections,
a 1x1 head to three classes. The shipped weights (``resources/segment/nucleus_unet.safetensors``)
were trained by ``bench/pipelines/train_nucleus_net.py --final`` on the 66 DSB2018 images (CC0);
their data, command, seeds and figures are in the model card beside them
(``resources/segment/nucleus_unet.md``) and in docs/benchmarks.md. The file is checked against
``WEIGHTS_SHA256`` before it is parsed, and read with safetensors (no pickle).

This module imports torch; only the backend (:class:`cellbench.features.segment.backends.UNetBackend`)
and the training script import it, so ``import cellbench`` does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import watershed
from torch import nn

from cellbench.errors import CellbenchError

__all__ = [
    "CANONICAL_RADIUS",
    "MODEL_VERSION",
    "WEIGHTS_PATH",
    "WEIGHTS_SHA256",
    "TinyUNet",
    "instances_from_probs",
    "load_net",
    "normalise",
    "predict_probs",
    "scale_factors",
    "segment_nuclei",
    "segment_nuclei_stack",
]

#: bumped whenever outputs can change (weights, pre- or post-processing)
MODEL_VERSION = "1"
#: nuclei are resized to about this radius (px) before the network sees them
CANONICAL_RADIUS = 8.0
#: channel widths of the four levels
WIDTHS: tuple[int, int, int, int] = (8, 16, 32, 64)
#: seeds and nuclei of fewer canonical pixels are dropped (scaled by the resize factor squared)
MIN_AREA = 12.0
#: average the class probabilities over the four flips of the input
FLIPS = False
#: resize factors are clipped to this range (radii from 2 to 128 px)
FACTOR_RANGE = (CANONICAL_RADIUS / 128.0, CANONICAL_RADIUS / 2.0)
WEIGHTS_PATH = Path(__file__).resolve().parents[2] / "resources/segment/nucleus_unet.safetensors"
WEIGHTS_SHA256 = "ae93217e56573b061bf49343056a2b6ac0d5b9f2402f1ad1d383decf66aa92e7"


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class TinyUNet(nn.Module):
    """A four-level U-Net: (B, 1, H, W) with H, W multiples of 8 -> (B, 3, H, W) class logits."""

    def __init__(self, widths: tuple[int, int, int, int] = WIDTHS) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.enc0 = _Block(1, w0)
        self.enc1 = _Block(w0, w1)
        self.enc2 = _Block(w1, w2)
        self.mid = _Block(w2, w3)
        self.dec2 = _Block(w3 + w2, w2)
        self.dec1 = _Block(w2 + w1, w1)
        self.dec0 = _Block(w1 + w0, w0)
        self.head = nn.Conv2d(w0, 3, 1)

    @staticmethod
    def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(self._up(m, e2))
        d1 = self.dec1(self._up(d2, e1))
        return self.head(self.dec0(self._up(d1, e0)))


def load_net(path: str | Path = WEIGHTS_PATH, sha256: str | None = WEIGHTS_SHA256) -> TinyUNet:
    """The network with the weights of ``path`` (safetensors), in eval mode.

    The file's sha256 must equal ``sha256`` (None skips the check: the training script's own
    files); a missing, altered or unreadable file is a one-line ``CellbenchError``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from cellbench.io import sha256_file

    path = Path(path)
    if not path.is_file():
        raise CellbenchError(
            "the unet backend's weight file is missing",
            path=path,
            fix="reinstall cellbench, or re-make it: python bench/pipelines/train_nucleus_net.py --final",
        )
    if sha256 is not None and sha256_file(path) != sha256:
        raise CellbenchError(
            "the unet backend's weight file does not have the expected sha256 (altered or corrupted)",
            path=path,
            fix="reinstall cellbench (the weights ship with it), or use --backend classical",
        )
    try:
        state = load(path.read_bytes())
        net = TinyUNet()
        net.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise CellbenchError(
            f"the unet backend's weight file cannot be read ({str(e).splitlines()[0]})",
            path=path,
            fix="re-make it: python bench/pipelines/train_nucleus_net.py --final",
        ) from None
    return net.eval()


def normalise(x: np.ndarray) -> np.ndarray:
    """Each image of an (N, H, W) stack to [0, 1] between its 0.5 and 99.8 percentiles
    (a flat image becomes 0), float32."""
    x = np.asarray(x, np.float32)
    lo, hi = np.percentile(x.reshape(len(x), -1), (0.5, 99.8), axis=1)
    span = np.where(hi > lo, hi - lo, np.inf).astype(np.float32)
    return np.clip((x - lo[:, None, None]) / span[:, None, None], 0.0, 1.0).astype(np.float32)


def scale_factors(radii: np.ndarray) -> np.ndarray:
    """Resize factors CANONICAL_RADIUS / r, clipped to FACTOR_RANGE and rounded to powers of
    2^(1/8)."""
    f = np.clip(CANONICAL_RADIUS / np.asarray(radii, np.float64), *FACTOR_RANGE)
    return 2.0 ** (np.round(8.0 * np.log2(f)) / 8.0)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) bilinear resize; antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


@torch.inference_mode()
def predict_probs(
    net: TinyUNet, images: np.ndarray, factor: float, *, flips: bool = False
) -> np.ndarray:
    """(N, H, W) normalised images of one size, resized by ``factor`` -> (N, 3, H, W) float32
    class probabilities (background, interior, border) at the images' own size; ``flips``
    averages the probabilities over the four flips of the input (4 x the time)."""
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
    h, w = x.shape[-2:]
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    x = _resize(x, (sh, sw))
    ph, pw = (-sh) % 8, (-sw) % 8
    if ph or pw:
        mode = "reflect" if min(sh, sw) > max(ph, pw) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    views = ((), (-1,), (-2,), (-2, -1)) if flips else ((),)
    p = sum(_flip(torch.softmax(net(_flip(x, d)), 1), d) for d in views) / len(views)
    p = p[..., :sh, :sw]
    return _resize(p, (h, w)).numpy()


def instances_from_probs(probs: np.ndarray, factor: float) -> np.ndarray:
    """(3, H, W) probabilities at an image's own size -> nucleus labels (int32, 1..k)."""
    fg = probs[0] < 0.5
    interior = probs[1]
    min_px = max(2, round(MIN_AREA / factor**2))
    seeds, n = ndi.label((interior > 0.5) & fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    sizes = np.bincount(seeds.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    remap = np.zeros(n + 1, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    seeds = remap[seeds]
    if seeds.max() == 0:
        return np.zeros(fg.shape, np.int32)
    labels = watershed(-interior, seeds, mask=fg).astype(np.int32)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    # renumber 1..k
    present = np.unique(labels)
    present = present[present > 0]
    remap = np.zeros(int(labels.max()) + 1, np.int32)
    remap[present] = np.arange(1, len(present) + 1)
    return remap[labels]


def segment_nuclei_stack(
    net: TinyUNet, stack: np.ndarray, radii: np.ndarray | None = None, *, flips: bool = FLIPS
) -> np.ndarray:
    """(N, H, W) DNA images of one size -> (N, H, W) int32 nucleus labels (numbered 1..k in each
    image). ``radii`` (px) replaces the classical scale estimate (tests, training); ``flips``:
    :func:`predict_probs`."""
    from cellbench.features.segment.classical import estimate_radii

    x = np.asarray(stack, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {x.shape}")
    out = np.zeros(x.shape, np.int32)
    if len(x) == 0:
        return out
    r = estimate_radii(x) if radii is None else np.asarray(radii, np.float64)
    factors = scale_factors(r)
    xn = normalise(x)
    for f in np.unique(factors):
        rows = np.flatnonzero(factors == f)
        for start in range(0, len(rows), 64):
            part = rows[start : start + 64]
            probs = predict_probs(net, xn[part], float(f), flips=flips)
            for i, p in zip(part, probs, strict=True):
                out[i] = instances_from_probs(p, float(f))
    return out


def segment_nuclei(
    net: TinyUNet, dna: np.ndarray, radius: float | None = None, *, flips: bool = FLIPS
) -> np.ndarray:
    """Nucleus labels (int32) of one 2-D DNA image of any size and dtype."""
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    radii = None if radius is None else [radius]
    return segment_nuclei_stack(net, x[None], radii, flips=flips)[0]
