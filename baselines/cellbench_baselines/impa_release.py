"""The IMPA authors' released checkpoints, read into cellbench's IMPA networks.

IMPA's authors (Palma et al., Nature Communications 2025) publish their trained models in the
Zenodo record of their data (record 8307629, folder ``checkpoints/<task>/``). Their training code
saves, once per epoch, ``<epoch:06d>_nets.ckpt``: one ``torch.save`` of a plain dict with the
``state_dict`` of each of the four networks (``generator``, ``style_encoder``, ``discriminator``,
``mapping_network``), tensors only; a sibling ``<epoch:06d>_embeddings.ckpt`` holds the frozen
fingerprint table of the training compounds (cellbench reads the dataset's own fingerprints
instead) and ``<epoch:06d>_optims.ckpt`` the optimisers. IMPA keeps no EMA copy: the saved
generator is the one their evaluation samples from.

Generation needs two of the four networks. Their layouts are those of cellbench's
:class:`~cellbench_baselines.impa.IMPAGenerator` and :class:`~cellbench_baselines.impa.MappingNetwork`
layer for layer (same convolutions, norms, shortcut and order of operations); only the names
differ, and :func:`generator_state` / :func:`mapping_state` rename them. The architecture (width,
style and noise sizes, bottleneck depth, mapping depth) is read from the tensor shapes, so any of
the authors' BBBC021 checkpoints loads without a config file.

Loading is ``torch.load(weights_only=True)``: the container holds only dicts and tensors, so no
allow-list is needed and nothing else can be unpickled. A foreign, truncated or mismatched file is
a one-line :class:`~cellbench.errors.CellbenchError` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cellbench.errors import CellbenchError
from cellbench_baselines.checkpoint import load_torch_file

#: the file name of the authors' network checkpoints: ``<epoch:06d>_nets.ckpt``
NETS_FILE = re.compile(r"^(\d+)_nets\.ckpt$")
#: the four entries of the authors' container; generation reads the two in the middle
CONTAINER_KEYS = ("generator", "mapping_network", "style_encoder", "discriminator")
#: read no checkpoint larger than this (the authors' BBBC021 nets file is about 0.2 GB)
#: encoder blocks that halve the resolution (96x96 -> 12x12; the authors' img_size 65..128)
N_DOWN = 3

_FIX = "pass the authors' <epoch>_nets.ckpt from their Zenodo record (checkpoints/<task>/)"


def release_nets_file(path: str | Path) -> Path | None:
    """The authors' ``*_nets.ckpt`` that ``path`` names, or None when it is not their layout.

    ``path`` may be the file itself (any name ending in ``.ckpt``) or a folder holding one or
    more ``<epoch>_nets.ckpt`` (the latest epoch is taken, as their ``_load_checkpoint`` would be
    told). A cellbench run folder or ``model.safetensors`` gives None.
    """
    p = Path(path)
    if p.is_file():
        return p if p.suffix == ".ckpt" else None
    if p.is_dir():
        found = [(int(m.group(1)), f) for f in p.iterdir() if (m := NETS_FILE.match(f.name))]
        if found:
            return max(found)[1]
    return None


def read_container(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The authors' ``{network: state_dict}`` dict, checked: each entry a dict of tensors."""
    obj = load_torch_file(path, fix=_FIX)
    if not isinstance(obj, dict) or not {"generator", "mapping_network"} <= set(obj):
        keys = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CellbenchError(
            f"not an IMPA nets checkpoint (expected the entries generator and mapping_network, "
            f"found {keys})",
            path=path,
            fix=_FIX,
        )
    for name in ("generator", "mapping_network"):
        state = obj[name]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CellbenchError(
                f"entry {name!r} of the IMPA checkpoint is not a state dict of tensors",
                path=path,
                fix=_FIX,
            )
    return obj


# ------------------------------------------------------------------------------- key renaming
def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix (a ``DataParallel`` wrapper saved as is)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def generator_state(theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' generator keys renamed to :class:`~cellbench_baselines.impa.IMPAGenerator`'s.

    ``from_rgb`` -> ``stem``; ``encode.i`` -> ``encoder.i`` and ``decode.i`` -> ``decoder.i``
    (``conv1x1`` -> ``skip``, the AdaIN ``fc`` -> ``to_params``); ``to_rgb`` -> ``head``.
    An unknown key is kept as is, so the strict load that follows names it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in _strip_module(theirs).items():
        new = re.sub(r"^from_rgb\.", "stem.", key)
        new = re.sub(r"^to_rgb\.", "head.", new)
        new = re.sub(r"^encode\.(\d+)\.", r"encoder.\1.", new)
        new = re.sub(r"^decode\.(\d+)\.", r"decoder.\1.", new)
        new = re.sub(r"\.conv1x1\.", ".skip.", new)
        new = re.sub(r"\.(norm[12])\.fc\.", r".\1.to_params.", new)
        out[new] = value
    return out


def mapping_state(theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' single-style mapping keys (``mapping_network.layers.j``) -> ``net.j``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in _strip_module(theirs).items():
        out[re.sub(r"^mapping_network\.layers\.", "net.", key)] = value
    return out


def _renamed(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def release_container(nets: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """cellbench IMPA networks -> the authors' container: their entry names and key names.

    ``nets`` holds any of ``generator``, ``mapping``, ``style_encoder``, ``discriminator`` (as
    :func:`~cellbench_baselines.impa.build_networks` returns them). The inverse of the renaming
    :func:`load_release` applies; it writes files the authors' ``CheckpointIO.load`` reads (their
    discriminator head is a 1x1 convolution, so its weight gains two unit dimensions).
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    skip = (r"\.skip\.", ".conv1x1.")
    if "generator" in nets:
        out["generator"] = _renamed(
            nets["generator"].state_dict(),
            [
                (r"^stem\.", "from_rgb."),
                (r"^head\.", "to_rgb."),
                (r"^encoder\.", "encode."),
                (r"^decoder\.", "decode."),
                skip,
                (r"\.(norm[12])\.to_params\.", r".\1.fc."),
            ],
        )
    if "mapping" in nets:
        out["mapping_network"] = _renamed(
            nets["mapping"].state_dict(), [(r"^net\.", "mapping_network.layers.")]
        )
    if "style_encoder" in nets:
        out["style_encoder"] = _renamed(
            nets["style_encoder"].state_dict(),
            [(r"^trunk\.", "conv."), (r"^head\.", "linear."), skip],
        )
    if "discriminator" in nets:
        disc = _renamed(
            nets["discriminator"].state_dict(),
            [(r"^trunk\.", "conv_blocks."), (r"^heads\.", "head."), skip],
        )
        disc["head.weight"] = disc["head.weight"][:, :, None, None]
        out["discriminator"] = disc
    return out


# ------------------------------------------------------------------------------- architecture
def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise CellbenchError(
            f"IMPA checkpoint lacks {key!r} (a multi-style or multimodal IMPA, which cellbench "
            "does not load)",
            path=path,
            fix=_FIX,
        )
    return tuple(state[key].shape)


def architecture(
    gen: dict[str, torch.Tensor], mapping: dict[str, torch.Tensor], fp_dim: int, path: Path
) -> dict[str, int]:
    """The cellbench IMPA config keys of a checkpoint, read from its (renamed) tensor shapes."""
    dim_in = _shape(gen, "stem.weight", path)[0]
    n_enc = 1 + max(int(k.split(".")[1]) for k in gen if k.startswith("encoder."))
    n_bottleneck = n_enc - N_DOWN
    if n_bottleneck < 0:
        raise CellbenchError(
            f"IMPA generator has {n_enc} encoder blocks, fewer than the {N_DOWN} downsamplings "
            "of a 96x96 model",
            path=path,
            fix=_FIX,
        )
    widest = _shape(gen, f"encoder.{n_enc - 1}.conv2.weight", path)[0]
    linears = sorted(
        int(k.split(".")[1]) for k in mapping if k.startswith("net.") and k.endswith(".weight")
    )
    if not linears:
        raise CellbenchError("IMPA checkpoint has no mapping network layers", path=path, fix=_FIX)
    first = _shape(mapping, f"net.{linears[0]}.weight", path)
    last = _shape(mapping, f"net.{linears[-1]}.weight", path)
    z_dim = first[1] - fp_dim
    if z_dim < 0:
        raise CellbenchError(
            f"IMPA mapping network takes {first[1]} inputs, fewer than the dataset's "
            f"{fp_dim}-d fingerprints",
            path=path,
            fix="score it on the dataset it was trained on (1024-d Morgan fingerprints)",
        )
    return {
        "dim_in": int(dim_in),
        "max_conv_dim": int(widest),
        "n_bottleneck": int(n_bottleneck),
        "style_dim": int(last[0]),
        "z_dim": int(z_dim),
        "mapping_layers": len(linears),
        "mapping_hidden": int(first[0]) if len(linears) > 1 else 512,
        "fingerprint_dim": int(fp_dim),
    }


@dataclass
class Release:
    """What :func:`load_release` read: the config and the two generation networks."""

    path: Path
    config: dict
    generator: torch.nn.Module
    mapping: torch.nn.Module


def load_release(path: Path, fp_dim: int, base_config: dict) -> Release:
    """The authors' generator and mapping network of ``path``, in cellbench's classes.

    ``base_config`` (the ``paper`` preset) supplies the keys a checkpoint does not determine;
    the architecture keys come from the tensors, and the strict load checks every tensor.
    """
    from cellbench_baselines.impa import _inference_networks  # impa.py imports this module

    container = read_container(path)
    gen_state = generator_state(container["generator"])
    map_state = mapping_state(container["mapping_network"])
    arch = architecture(gen_state, map_state, fp_dim, path)
    config = {**base_config, **arch, "residual_output": False, "source": "impa-release"}
    try:
        gen, mapping = _inference_networks(config)
    except (TypeError, ValueError) as exc:
        raise CellbenchError(
            f"IMPA checkpoint shapes give no valid network ({exc})", path=path, fix=_FIX
        ) from None
    for net, state, name in ((gen, gen_state, "generator"), (mapping, map_state, "mapping")):
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
            raise CellbenchError(
                f"IMPA checkpoint's {name} does not fit cellbench's IMPA network ({detail})",
                path=path,
                fix=_FIX,
            ) from None
    return Release(path, config, gen, mapping)
