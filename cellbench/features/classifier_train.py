"""Training and evaluating the MoA classifier on a dataset's real crops (``cellbench classifier``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.layout import MOAS
from cellbench.features.classifier import (
    classification_report,
    load_classifier,
    predict_proba,
    save_classifier,
    train_head,
)

Progress = Callable[[str, int, int], None]


def _treated(ds: BBBC021Dataset, split: str):
    rows = ds.split(split)
    return rows[~rows["is_control"]].sort_values("SAMPLE_KEY")


def inception_of_keys(
    ds: BBBC021Dataset,
    keys: list[str],
    extractor,
    progress: Progress,
    phase: str,
    *,
    flips: tuple[tuple[bool, bool], ...] = ((False, False),),
) -> np.ndarray:
    """(N, 2048) Inception pool features of dataset crops; (N, V, 2048) for V ``flips`` variants.

    Each variant is ``(flip rows, flip columns)`` of the (H, W, C) crop.
    """
    out = np.zeros((len(keys), len(flips), 2048), np.float32)
    for start in range(0, len(keys), 128):
        crops = ds.load_crops(keys[start : start + 128])
        for v, (rows, cols) in enumerate(flips):
            view = crops[:, ::-1] if rows else crops
            view = view[:, :, ::-1] if cols else view
            out[start : start + len(crops), v] = extractor(np.ascontiguousarray(view))
        progress(phase, start + len(crops), len(keys))
    return out[:, 0] if len(flips) == 1 else out


#: the real split the classifier is trained on, and the one its card reports test metrics on
TRAIN_SPLIT = "train-iid"
TEST_SPLIT = "test-iid"


def train_and_save(
    ds: BBBC021Dataset,
    *,
    out: str | Path | None = None,
    epochs: int = 10,
    seed: int = 0,
    device: str = "cpu",
    progress: Progress = lambda *a: None,
    extractor=None,
) -> tuple[Path, dict]:
    """Train on ``train-iid``'s treated crops with random flips, test on ``test-iid``, save.

    The card holds no timestamp or timing, so a rebuild from the same data writes the same bytes.
    ``extractor`` (an :class:`~cellbench.features.inception.InceptionFeatures`) may be passed in
    to share one loaded network.
    """
    from cellbench.features.classifier import FLIP_VARIANTS, torch_threads
    from cellbench.features.inception import InceptionFeatures
    from cellbench.scoring.artifacts import ARTIFACT_DIR

    extractor = extractor if extractor is not None else InceptionFeatures(device=device)
    train, test = _treated(ds, TRAIN_SPLIT), _treated(ds, TEST_SPLIT)
    x_tr = inception_of_keys(
        ds,
        train["SAMPLE_KEY"].tolist(),
        extractor,
        progress,
        "Inception (train-iid, 4 flips)",
        flips=FLIP_VARIANTS,
    )
    x_te = inception_of_keys(
        ds, test["SAMPLE_KEY"].tolist(), extractor, progress, "Inception (test-iid)"
    )
    y_tr = np.array([MOAS.index(m) for m in train["ANNOT"]])
    y_te = np.array([MOAS.index(m) for m in test["ANNOT"]])
    head = train_head(
        x_tr,
        y_tr,
        epochs=epochs,
        seed=seed,
        on_epoch=lambda e, loss: progress("training", e, epochs),
    )
    with torch_threads(1):
        report = classification_report(predict_proba(head, x_te), y_te)
        train_report = classification_report(predict_proba(head, x_tr[:, 0]), y_tr)
    per_class = train.groupby("ANNOT")["CPD_NAME"].agg(lambda c: sorted(set(c)))
    card = {
        "model": "MLP head 2048-512-12 (ReLU, dropout 0.5) on frozen FID Inception pool3 features",
        "training": {
            "optimizer": "Adam",
            "lr": 1e-3,
            "epochs": epochs,
            "batch_size": 64,
            "seed": seed,
            "augmentation": "random horizontal and vertical flip (p = 0.5 each): one of the four "
            "precomputed flip variants drawn per crop per epoch",
            "threads": 1,
        },
        "dataset": ds.name,
        "dataset_index_sha256": ds.index_sha256,
        "train_split": f"{TRAIN_SPLIT} (treated crops; the CellFlux unseen compounds removed)",
        "test_split": f"{TEST_SPLIT} (treated crops)",
        "n_train": len(y_tr),
        "training_compounds": {m: per_class.get(m, []) for m in MOAS},
        "inception_sha256": extractor.sha256,
        "feature_network": extractor.identity(),
        "train_accuracy": round(train_report["accuracy"], 4),
        "test_metrics": report,
        "intended_use": "the moa reward of cellbench's metric suite on this dataset only",
    }
    folder = Path(out) if out is not None else ds.root / ARTIFACT_DIR / "classifier"
    save_classifier(head, folder, card)
    return folder, load_classifier(folder)[1]


def evaluate_classifier(
    ds: BBBC021Dataset,
    *,
    split: str = "test",
    device: str = "cpu",
    progress: Progress = lambda *a: None,
) -> dict:
    """Accuracy, macro-F1, per-class scores and confusion matrix on the real crops of ``split``."""
    from cellbench.features.inception import InceptionFeatures
    from cellbench.scoring.artifacts import find_artifact

    head, _card = load_classifier(find_artifact(ds, "classifier"))
    rows = _treated(ds, split)
    x = inception_of_keys(
        ds, rows["SAMPLE_KEY"].tolist(), InceptionFeatures(device=device), progress, "Inception"
    )
    y = np.array([MOAS.index(m) for m in rows["ANNOT"]])
    return classification_report(predict_proba(head, x), y)
