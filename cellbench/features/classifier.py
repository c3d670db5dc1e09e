"""The MoA classifier behind the ``moa`` reward (docs/scoring.md).

Architecture (the choice the CellFlux group made, kept so the numbers are comparable): the frozen
FID Inception network's 2048-d pool features -- already computed for FID/KID, so one network pass
serves all three -- followed by a small MLP head 2048 -> 512 -> 12 with ReLU and dropout 0.5,
trained with Adam (lr 1e-3) for 10 epochs on the real treated crops of the in-distribution training
split (``train-iid``: the eight compounds CellFlux holds out as unseen removed) with random
horizontal and vertical flips, as CellFlux's classifier was. cellbench adds a feature
standardisation (train mean/std, stored in the artifact) so training does not depend on the scale
of the pool features. Training is deterministic: same features and seed, same weight bytes
(:func:`train_head`).

An artifact is a folder with ``classifier.safetensors`` (tensors only) and ``classifier.json`` (the
model card: dataset, index hash, feature network hash, class names, metrics, the weights' sha256).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellbench.data.layout import MOAS
from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, atomic_write_text, read_json_object, sha256_file

HEAD_VERSION = "1"
#: the flip variants the classifier is trained on: (flip rows, flip columns) of an (H, W, C) crop
FLIP_VARIANTS: tuple[tuple[bool, bool], ...] = (
    (False, False),
    (False, True),
    (True, False),
    (True, True),
)
WEIGHTS_NAME = "classifier.safetensors"
CARD_NAME = "classifier.json"


class MoAHead(nn.Module):
    """Standardise -> Linear(2048, 512) -> ReLU -> Dropout(0.5) -> Linear(512, n_classes)."""

    def __init__(self, in_dim: int = 2048, hidden: int = 512, n_classes: int = len(MOAS)):
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, n_classes)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats - self.feat_mean) / self.feat_std)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count.

    The head is trained on one thread: reductions, matrix products and dropout masks can then not
    depend on the machine's thread count, so the same features give the same weight bytes.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> MoAHead:
    """Train a head on features and integer labels (indices into ``MOAS``), deterministically.

    ``features`` is (N, D), or (N, V, D) with V precomputed augmentation variants of each sample
    (the four flips of :data:`FLIP_VARIANTS`): each epoch then draws one variant per sample from
    the seeded generator, which is exactly a random horizontal and vertical flip with p = 0.5
    each. The standardisation uses the mean and std over every variant, computed in float64 by
    numpy. Training runs on one torch thread (:func:`torch_threads`): same inputs and seed, same
    weight bytes, whatever ``torch.get_num_threads()`` is outside.
    """
    feats = np.asarray(features, np.float32)
    if feats.ndim == 2:
        feats = feats[:, None, :]
    n, n_var, dim = feats.shape
    flat = feats.reshape(-1, dim).astype(np.float64)
    mean = flat.mean(0)
    std = np.maximum(flat.std(0, ddof=1), 1e-3)
    draw = np.random.default_rng(seed)
    with torch_threads(1):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x_all = torch.from_numpy(feats)
        y = torch.as_tensor(labels, dtype=torch.long)
        head = MoAHead(in_dim=dim)
        head.feat_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        head.feat_std.copy_(torch.from_numpy(std.astype(np.float32)))
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        for epoch in range(epochs):
            head.train()
            variant = torch.from_numpy(draw.integers(0, n_var, size=n))
            x = x_all[torch.arange(n), variant]
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad()
                loss = loss_fn(head(x[idx]), y[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            if on_epoch is not None:
                on_epoch(epoch + 1, total / n)
    head.eval()
    return head


@torch.inference_mode()
def predict_proba(head: MoAHead, features: np.ndarray) -> np.ndarray:
    """Class probabilities, float64 (N, n_classes)."""
    head.eval()
    logits = head(torch.as_tensor(features, dtype=torch.float32))
    return torch.softmax(logits.double(), dim=1).numpy()


def classification_report(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class recall/precision/F1 and the confusion matrix."""
    n_classes = probs.shape[1]
    pred = probs.argmax(1)
    labels = np.asarray(labels)
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / cm.sum(1)
        precision = tp / cm.sum(0)
        f1 = 2 * precision * recall / (precision + recall)
    present = cm.sum(1) > 0
    f1 = np.where(np.isfinite(f1), f1, 0.0)
    return {
        "n": len(labels),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            MOAS[k]: {
                "n": int(cm[k].sum()),
                "recall": None if not np.isfinite(recall[k]) else round(float(recall[k]), 4),
                "precision": None
                if not np.isfinite(precision[k])
                else round(float(precision[k]), 4),
                "f1": round(float(f1[k]), 4),
            }
            for k in range(n_classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def save_classifier(head: MoAHead, folder: str | Path, card: dict) -> str:
    """Write the weights and the card atomically; return the weights' sha256."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"head_version": HEAD_VERSION})
    digest = sha256_file(folder / WEIGHTS_NAME)
    full = {**card, "head_version": HEAD_VERSION, "classes": list(MOAS), "weights_sha256": digest}
    atomic_write_text(folder / CARD_NAME, json.dumps(full, indent=2, sort_keys=True) + "\n")
    return digest


def load_classifier(folder: str | Path) -> tuple[MoAHead, dict]:
    """Load and verify an artifact folder; a truncated or foreign file raises a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    card_path, weights = folder / CARD_NAME, folder / WEIGHTS_NAME
    fix = "rebuild it with `cellbench classifier train` or reinstall cellbench"
    if not card_path.is_file() or not weights.is_file():
        raise CellbenchError("classifier artifact is incomplete", path=folder, fix=fix)
    card = read_json_object(card_path, "classifier card", fix)
    digest = sha256_file(weights)
    if digest != card.get("weights_sha256"):
        raise CellbenchError(
            "classifier weights do not match the sha256 in their card (truncated or replaced)",
            path=weights,
            fix=fix,
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CellbenchError(
            f"unreadable classifier weights ({exc})", path=weights, fix=fix
        ) from None
    head = MoAHead(in_dim=state["feat_mean"].shape[0], n_classes=len(card["classes"]))
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise CellbenchError(
            f"classifier weights do not fit the head ({str(exc).splitlines()[0]})",
            path=weights,
            fix=fix,
        ) from None
    head.eval()
    return head, card
