"""The CellFlux authors' released checkpoints, read into cellbench's network.

The CellFlux authors (Zhang et al., ICML 2025) publish one checkpoint per dataset in a Hugging Face
repository, at ``checkpoints/cellflux/<dataset>/checkpoint.pth``. The facts below were read from
their public training code (nothing of it is copied here):

* the file is written by ``torch.save`` as a dict with ``model`` (the state of their EMA wrapper:
  the network's weights as ``model.<key>``, the EMA weights as ``shadow_params.<i>`` in the order
  of the network's parameters, and a ``num_updates`` counter), ``optimizer``, ``lr_schedule``,
  ``scaler``, ``epoch`` and ``args``, the run's options as a ``types.SimpleNamespace`` (their
  launch scripts turn the ``argparse.Namespace`` into one);
* the network is guided-diffusion's ADM UNet in their BBBC021 configuration, which cellbench builds
  as :data:`~cellbench_baselines.nn.unet.PUBLISHED_CELLFLUX` (the same layers and parameter
  count); their key names differ from cellbench's, :func:`authors_key_names` maps one onto the other;
* the EMA shadow parameters are the weights they evaluate with (``--use_ema``).

The file is read with ``torch.load(weights_only=True)`` and an allow-list of exactly the two
namespace types (:data:`ALLOWED_GLOBALS`): tensors, numbers, strings and containers load, any other
Python object is refused with a one-line :class:`~cellbench.errors.CellbenchError` (never
unpickled). The result is a :class:`~cellbench_baselines.checkpoint.LoadedRun` whose config is the
``paper`` CellFlux preset (the published network and sampling settings), so generation and
CellFluxRL use it like a checkpoint of ``cellbench train`` (docs/generators.md, "The authors'
checkpoint").
"""

from __future__ import annotations

import argparse
import copy
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellbench.errors import CellbenchError
from cellbench.io import sha256_file
from cellbench_baselines.checkpoint import LoadedRun, load_torch_file
from cellbench_baselines.config import check_config
from cellbench_baselines.nn.layers import AttentionBlock, Downsample, ResBlock, Upsample
from cellbench_baselines.nn.unet import PUBLISHED_CELLFLUX, UNet, unet_from_config

#: the file name of a released checkpoint, and where the Hugging Face repository keeps it
AUTHORS_FILE = "checkpoint.pth"
HF_LAYOUT = "checkpoints/cellflux/{dataset}/checkpoint.pth"
#: the only non-tensor Python types the loader reconstructs (the ``args`` entry)
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace, types.SimpleNamespace)
#: the ``args`` entries recorded with a loaded checkpoint (sampling settings and provenance)
ARGS_KEPT = (
    "dataset",
    "epoch",
    "epochs",
    "cfg_scale",
    "ode_method",
    "ode_options",
    "edm_schedule",
    "use_initial",
    "noise_level",
    "noise_prob",
    "class_drop_prob",
    "skewed_timesteps",
    "use_ema",
    "lr",
    "batch_size",
)
FORMAT = "cellflux-authors"
_FIX = (
    "pass the checkpoint.pth of the CellFlux authors' release (or a folder holding "
    f"{HF_LAYOUT.format(dataset='<dataset>')}), or a run folder of `cellbench train cellflux`"
)

_RES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "emb": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "skip": "skip_connection",
}
_ATTN = {"norm": "norm", "qkv": "qkv", "proj": "proj_out"}


# ------------------------------------------------------------------------------ key names
def _layer_names(layer: nn.Module) -> dict[str, str]:
    if isinstance(layer, ResBlock):
        return _RES
    if isinstance(layer, AttentionBlock):
        return _ATTN
    if isinstance(layer, Downsample):
        return {"conv": "op"}
    if isinstance(layer, Upsample):
        return {"conv": "conv"}
    raise TypeError(f"no published counterpart of {type(layer).__name__}")


def _pairs(unet: UNet) -> Iterator[tuple[str, str]]:
    """(cellbench prefix, authors' prefix) per sub-module, in the authors' parameter order."""
    if unet.cond_proj is not None:
        yield "cond_proj", "mol_embed_transform"
    yield "time_mlp.0", "time_embed.0"
    yield "time_mlp.2", "time_embed.2"
    yield "input_conv", "input_blocks.0.0"
    for name, blocks, theirs, offset in (
        ("down", unet.down, "input_blocks", 1),
        ("middle", [unet.middle], "middle_block", 0),
        ("up", unet.up, "output_blocks", 0),
    ):
        for i, block in enumerate(blocks):
            ours_block = f"{name}.{i}" if name != "middle" else name
            theirs_block = f"{theirs}.{i + offset}" if name != "middle" else theirs
            for j, layer in enumerate(block):
                for ours_sub, theirs_sub in _layer_names(layer).items():
                    if getattr(layer, ours_sub, None) is not None:
                        yield f"{ours_block}.{j}.{ours_sub}", f"{theirs_block}.{j}.{theirs_sub}"
    yield "out_norm", "out.0"
    yield "out_conv", "out.2"


def authors_key_names(unet: UNet) -> dict[str, str]:
    """cellbench parameter name -> the authors' name, in the order of the authors' parameters.

    The authors' network registers the condition projection before the time MLP; everything
    else is in the same order as cellbench's, which is what the EMA ``shadow_params.<i>`` follow.
    A network with a class embedding or pixel folding (no published counterpart) is a ValueError.
    """
    if unet.class_emb is not None or unet.patch_size != 1:
        raise ValueError("only a UNet without classes or pixel folding has published names")
    ours = dict(unet.named_parameters())
    out: dict[str, str] = {}
    for mine, theirs in _pairs(unet):
        for leaf in ("weight", "bias"):
            if f"{mine}.{leaf}" in ours:
                out[f"{mine}.{leaf}"] = f"{theirs}.{leaf}"
    if set(out) != set(ours):
        raise ValueError(f"unmapped parameters {sorted(set(ours) - set(out))[:3]}")
    return out


def _to_theirs(key: str, value: torch.Tensor) -> torch.Tensor:
    # their attention projections are 1-d convolutions (out, in, 1); cellbench's are 2-d
    if key.endswith((".qkv.weight", ".proj.weight")):
        return value.reshape(value.shape[:3])
    return value


def authors_state_dict(unet: UNet) -> dict[str, torch.Tensor]:
    """The network's weights under the authors' names and shapes, in their parameter order."""
    state = unet.state_dict()
    return {theirs: _to_theirs(k, state[k]) for k, theirs in authors_key_names(unet).items()}


def authors_model_entry(
    unet: UNet, ema_weights: UNet | None = None, num_updates: int = 0
) -> dict[str, torch.Tensor]:
    """The ``model`` entry of an authors' checkpoint: the EMA wrapper's state dict.

    ``model.<key>`` holds ``unet``'s weights, ``shadow_params.<i>`` those of ``ema_weights``
    (default: the same network), ``num_updates`` the EMA counter. Used by the tests to write a
    checkpoint in the published layout with cellbench's own code.
    """
    raw = authors_state_dict(unet)
    ema = authors_state_dict(ema_weights if ema_weights is not None else unet)
    out = {f"model.{k}": v.clone() for k, v in raw.items()}
    out["num_updates"] = torch.tensor(int(num_updates))
    for i, v in enumerate(ema.values()):
        out[f"shadow_params.{i}"] = v.clone()
    return out


# ------------------------------------------------------------------------------ finding
def dataset_family(name: str) -> str:
    """The authors' dataset folder name for a cellbench dataset (``bbbc021-sim`` -> bbbc021)."""
    return name.split("-", 1)[0]


def find_authors_file(path: str | Path, dataset: str = "bbbc021") -> Path | None:
    """The authors' checkpoint file ``path`` names, or None when it is not one.

    ``path`` is the ``.pth`` file itself, a folder holding ``checkpoint.pth``, or a folder in the
    Hugging Face layout (``checkpoints/cellflux/<dataset>/checkpoint.pth``, the folder of
    ``dataset``'s family). A cellbench run or checkpoint folder (``config.json``) is not one.
    """
    p = Path(path)
    if p.is_file():
        return None if p.suffix in (".safetensors", ".json") else p
    if not p.is_dir() or (p / "config.json").is_file():
        return None
    if (p / AUTHORS_FILE).is_file():
        return p / AUTHORS_FILE
    hf = sorted((p / "checkpoints" / "cellflux").glob(f"*/{AUTHORS_FILE}"))
    if not hf:
        return None
    family = dataset_family(dataset)
    for f in hf:
        if f.parent.name == family:
            return f
    raise CellbenchError(
        f"no CellFlux checkpoint for {family!r} in this folder (it has "
        f"{', '.join(f.parent.name for f in hf)})",
        path=p,
        fix=f"download {HF_LAYOUT.format(dataset=family)} from the authors' release",
    )


# ------------------------------------------------------------------------------ reading
def _ema_weights(entry: dict, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The evaluation weights under the authors' names: the EMA shadows, else the raw weights."""
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in entry.items()):
        raise CellbenchError("its 'model' entry is not a state dict", path=path, fix=_FIX)
    raw = {k[len("model.") :]: v for k, v in entry.items() if k.startswith("model.")}
    shadows = [k for k in entry if k.startswith("shadow_params.")]
    if not shadows:
        if raw:
            raise CellbenchError("EMA wrapper without shadow_params", path=path, fix=_FIX)
        return dict(entry), "raw (no EMA in the file)"
    if len(shadows) != len(raw):
        raise CellbenchError(
            f"{len(shadows)} EMA shadow parameters for {len(raw)} network parameters",
            path=path,
            fix=_FIX,
        )
    out = {}
    for i, (key, value) in enumerate(raw.items()):
        shadow = entry.get(f"shadow_params.{i}")
        if shadow is None or shadow.shape != value.shape:
            raise CellbenchError(
                f"EMA shadow_params.{i} does not match model.{key}", path=path, fix=_FIX
            )
        out[key] = shadow
    return out, "ema"


def _args_dict(args: Any) -> dict[str, Any]:
    if not isinstance(args, ALLOWED_GLOBALS):
        return {}
    return {k: copy.deepcopy(v) for k, v in vars(args).items() if k in ARGS_KEPT}


def _index(key: str, prefix: str) -> int | None:
    if not key.startswith(prefix):
        return None
    head = key[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def infer_unet_config(theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The UNet config of a state dict under the authors' names (sizes read from the weights).

    The widths, levels, blocks per level, attention levels, condition size and channel counts come
    from the tensors; the rest is the published design (one attention head, parameter-free
    resampling, eps 1e-5, time in [0, 1]), at 96x96. The caller checks every key and shape of the
    network built from it, so a misread design cannot load silently. Raises KeyError/ValueError on
    a state dict that is not of this family.
    """
    base = int(theirs["time_embed.0.weight"].shape[1])
    inputs = {_index(k, "input_blocks.") for k in theirs} - {None}
    n_in = max(inputs) + 1  # type: ignore[type-var]
    pooled = [i for i in range(1, n_in) if i not in inputs]  # parameter-free downsampling
    levels = len(pooled) + 1
    per_level, rest = divmod(n_in - 1 - len(pooled), levels)
    if rest or per_level < 1:
        raise ValueError("input blocks do not form equal levels")
    mult, attention, i = [], [], 1
    for level in range(levels):
        width = int(theirs[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0])
        if width % base:
            raise ValueError("a level's width is not a multiple of the base width")
        mult.append(width // base)
        if f"input_blocks.{i}.1.qkv.weight" in theirs:
            attention.append(int(PUBLISHED_CELLFLUX["image_size"]) >> level)
        i += per_level + 1
    channels = int(theirs["input_blocks.0.0.weight"].shape[1])
    return {
        **PUBLISHED_CELLFLUX,
        "base_channels": base,
        "channel_mult": mult,
        "num_res_blocks": per_level,
        "attention_resolutions": attention,
        "cond_dim": int(theirs["mol_embed_transform.weight"].shape[1]),
        "in_channels": channels,
        "out_channels": int(theirs["out.2.weight"].shape[0]),
    }


def published_config(unet: dict[str, Any]) -> dict:
    """The ``paper`` CellFlux preset (network and sampling) with ``unet`` as its network."""
    from cellbench_baselines.cellflux import PRESETS

    cfg = copy.deepcopy(PRESETS["paper"])
    cfg["preset"] = "paper"
    cfg["unet"] = copy.deepcopy(unet)
    return cfg


def _not_published(path: Path, exc: Exception) -> CellbenchError:
    """The one-line error of a checkpoint whose UNet is not of the published design."""
    return CellbenchError(
        f"not a CellFlux UNet of the published design ({type(exc).__name__}: {exc})",
        path=path,
        fix=_FIX,
    )


def read_authors_checkpoint(path: str | Path) -> LoadedRun:
    """The authors' checkpoint at ``path`` as a :class:`LoadedRun` of the ``paper`` network.

    ``weights["unet"]`` holds the EMA weights under cellbench's names, checked against the
    published network (every key and shape); ``meta`` records the format, which weights were
    used and the sampling-relevant ``args`` of their run. A foreign, truncated or mismatching
    file is a one-line CellbenchError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CellbenchError("checkpoint file not found", path=path, fix=_FIX)
    obj = load_torch_file(path, fix=_FIX, allowed_globals=ALLOWED_GLOBALS)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CellbenchError(
            "not a CellFlux checkpoint (no 'model' state dict in it)", path=path, fix=_FIX
        )
    theirs, which = _ema_weights(obj["model"], path)
    try:
        config = published_config(infer_unet_config(theirs))
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise _not_published(path, exc) from None
    from cellbench_baselines.cellflux import BOUNDS

    check_config(config, BOUNDS, where=path, fix=_FIX)  # before a network is built from it
    try:
        with torch.device("meta"):
            net = unet_from_config(config["unet"])
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise _not_published(path, exc) from None
    names = authors_key_names(net)
    expected = {theirs_key: ours for ours, theirs_key in names.items()}
    missing = [k for k in expected if k not in theirs]
    extra = [k for k in theirs if k not in expected]
    if missing or extra:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(extra[:3])}" if extra else "",
            )
            if part
        )
        raise CellbenchError(f"not the published CellFlux UNet ({detail})", path=path, fix=_FIX)
    shapes = dict(net.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for theirs_key, ours in expected.items():
        value = theirs[theirs_key]
        want = shapes[ours].shape
        if value.shape != want and (*value.shape, 1) != tuple(want):
            raise CellbenchError(
                f"{theirs_key} has shape {tuple(value.shape)}, the published network {tuple(want)}",
                path=path,
                fix=_FIX,
            )
        state[ours] = value.reshape(want).to(torch.float32).clone()
    published = config["unet"] == {**PUBLISHED_CELLFLUX, "cond_dim": config["unet"]["cond_dim"]}
    meta = {
        "format": FORMAT,
        "model": "cellflux",
        "weights": which,
        "network": "published" if published else "published design, other sizes",
        "args": _args_dict(obj.get("args")),
    }
    if isinstance(obj.get("epoch"), int):
        meta["epoch"] = obj["epoch"]
    return LoadedRun(
        path=path,
        model="cellflux",
        config=config,
        weights={"unet": state},
        meta=meta,
        sha256=sha256_file(path),
        file=path,
    )
