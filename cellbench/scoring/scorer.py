"""The one scoring path: per-image features, then per-image rewards (``docs/scoring.md``).

:class:`Scorer` is what ``cellbench eval``, :class:`cellbench.scoring.RewardModel`,
``cellbench regress``, ``cellbench validate-metrics`` and the CellFluxRL rollout scorer share:

1. **features** (:meth:`Scorer.features`): one segmentation pass (the backend's per-image
   features and, on request, the morphology profile of the same masks), one Inception pass (pool features, for FID/KID and the classifier) and the MoA
   classifier's probabilities, each computed once per image;
2. **rewards** (:meth:`Scorer.rewards`): the z-scored rewards against the reference statistics,
   the classifier reward and ``moa_accuracy``.

:meth:`Scorer.score` is the two steps in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellbench.data.layout import MOAS
from cellbench.errors import CellbenchError
from cellbench.metrics.rewards import compute_rewards
from cellbench.scoring.artifacts import Artifacts

#: a phase-aware progress callback: (phase, done, total)
PhaseProgress = Callable[[str, int, int], None]
#: images per Inception call and progress update (a multiple of the network's own batch of 8, so
#: the features are the same bits as with any other multiple; small, so the bar moves often)
INCEPTION_BATCH = 8


@dataclass
class Features:
    """The per-image features of a batch, in the order of the images.

    Attributes:
        seg: (N, F) float64 segmentation features (columns: :attr:`Scorer.feature_names`).
        inception: (N, 2048) float32 Inception pool features, or None (no Inception pass).
        probs: (N, n_moas) float64 MoA classifier probabilities, or None (no classifier).
        profile: (N, P) float64 morphology profiles of the same masks as ``seg`` (columns:
            :attr:`Scorer.profile_names`), or None (not asked for).
    """

    seg: np.ndarray
    inception: np.ndarray | None = None
    probs: np.ndarray | None = None
    profile: np.ndarray | None = None


class Scorer:
    """Per-image features and rewards of uint8 (N, 96, 96, 3) crops.

    Args:
        artifacts: the dataset's card, reference statistics and classifier
            (:meth:`Artifacts.for_dataset` or :meth:`Artifacts.shipped`).
        backend: segmentation backend name.
        device: device of the Inception network.
        use_inception: load the Inception network and the MoA classifier (without them there are
            no Inception features, no ``moa`` reward and no ``moa_accuracy``).
    """

    def __init__(
        self,
        artifacts: Artifacts,
        *,
        backend: str = "classical",
        device: str = "cpu",
        use_inception: bool = True,
    ):
        from cellbench.features.reference import load_reference
        from cellbench.features.segment.backends import get_backend

        self.artifacts = artifacts
        self.backend = get_backend(backend, device)
        self.reference_path = artifacts.reference_path(self.backend.name)
        self.reference, self.reference_sha256 = load_reference(
            self.reference_path, backend_identity=self.backend.identity()
        )
        self.inception = None
        self.head = None
        self.classifier_card: dict | None = None
        self._classifier_card_sha256: str | None = None
        if use_inception:
            from cellbench.features.classifier import CARD_NAME, load_classifier
            from cellbench.features.inception import InceptionFeatures
            from cellbench.io import sha256_file
            from cellbench.ui import step

            with step("loading the Inception network"):
                self.inception = InceptionFeatures(device=device)
            classifier = artifacts.classifier_path()
            self.head, self.classifier_card = load_classifier(classifier)
            self._classifier_card_sha256 = sha256_file(classifier / CARD_NAME)
            if self.classifier_card.get("inception_sha256") not in (None, self.inception.sha256):
                raise CellbenchError(
                    "the MoA classifier was trained on another feature network",
                    path=classifier,
                    fix=f"retrain with `cellbench classifier train --dataset {artifacts.name}`",
                )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the columns of :attr:`Features.seg`."""
        return self.backend.feature_names

    @property
    def profile_names(self) -> tuple[str, ...]:
        """Names of the columns of :attr:`Features.profile` (:mod:`cellbench.features.profile`)."""
        from cellbench.features.profile import profile_names

        card = self.artifacts.card
        return profile_names(tuple(card.channels), card.dna_channel)

    # ------------------------------------------------------------------------------ features
    def segment_features(
        self,
        images: np.ndarray,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        profile: bool = False,
    ) -> np.ndarray:
        """(N, F) segmentation features of uint8 crops; with ``profile``, (N, F + P): then the
        morphology profile of the same masks."""
        return self.backend.features(
            images,
            dna_channel=self.artifacts.card.dna_channel,
            on_progress=on_progress,
            profile=profile,
        )

    def inception_features(
        self, images: np.ndarray, on_progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """float32-rounded Inception features (the precision stored in shard files)."""
        if self.inception is None:
            raise CellbenchError(
                "this scorer was built without the Inception network",
                fix="build it with use_inception=True",
            )
        out = np.zeros((len(images), 2048), np.float32)
        if on_progress is not None:
            on_progress(0, len(images))  # the bar shows (and its clock runs) before the first batch
        for start in range(0, len(images), INCEPTION_BATCH):
            out[start : start + INCEPTION_BATCH] = self.inception(
                images[start : start + INCEPTION_BATCH]
            )
            if on_progress is not None:
                on_progress(min(start + INCEPTION_BATCH, len(images)), len(images))
        return out

    def moa_probs(self, inception_feats: np.ndarray) -> np.ndarray:
        """(N, n_moas) MoA classifier probabilities from Inception features."""
        from cellbench.features.classifier import predict_proba

        if self.head is None:
            raise CellbenchError(
                "this scorer was built without the MoA classifier",
                fix="build it with use_inception=True",
            )
        return predict_proba(self.head, inception_feats)

    def features(
        self,
        images: np.ndarray,
        *,
        on_progress: PhaseProgress | None = None,
        use_inception: bool = True,
        seg: np.ndarray | None = None,
        profile: bool = False,
    ) -> Features:
        """Every per-image feature of ``images``, each stage computed once.

        Args:
            images: uint8 (N, H, W, 3) crops.
            on_progress: called with ("segmenting" or "Inception", done, total).
            use_inception: False skips the Inception pass and the classifier even where this
                scorer has them (``inception`` and ``probs`` are then None).
            seg: segmentation features of these images computed elsewhere (a worker process):
                the segmentation pass is skipped and these are used.
            profile: also the morphology profile, from the masks of the same segmentation pass
                (not with ``seg``: the masks are gone).
        """

        def phase(name: str) -> Callable[[int, int], None] | None:
            if on_progress is None:
                return None
            return lambda done, total: on_progress(name, done, total)

        prof = None
        if seg is None:
            seg = self.segment_features(images, phase("segmenting"), profile=profile)
            if profile:
                n_feat = len(self.feature_names)
                seg, prof = seg[:, :n_feat], seg[:, n_feat:]
        elif profile:
            raise ValueError("a profile needs the masks: leave seg=None")
        elif len(seg) != len(images):
            raise ValueError(f"{len(seg)} segmentation feature rows for {len(images)} images")
        if not use_inception or self.inception is None:
            return Features(seg=seg, profile=prof)
        inc = self.inception_features(images, phase("Inception"))
        probs = self.moa_probs(inc) if self.head is not None else None
        return Features(seg=seg, inception=inc, probs=probs, profile=prof)

    # ------------------------------------------------------------------------------- rewards
    def rewards(
        self, seg_features: np.ndarray, probs: np.ndarray | None, moas: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-image rewards (and ``moa_accuracy`` as 0/1) from precomputed features."""
        feats = {name: seg_features[:, j] for j, name in enumerate(self.feature_names)}
        moa_idx = np.array([MOAS.index(m) for m in moas])
        p_true = None if probs is None else probs[np.arange(len(moas)), moa_idx]
        out = compute_rewards(feats, p_true, moas, self.reference["per_moa"])
        out["moa_accuracy"] = (
            np.full(len(moas), np.nan)
            if probs is None
            else (probs.argmax(1) == moa_idx).astype(np.float64)
        )
        return out

    def score(self, images: np.ndarray, moas: np.ndarray | list[str]) -> dict[str, np.ndarray]:
        """Per-image rewards of uint8 crops whose true MoAs are ``moas``: rewards(features(images))."""
        feats = self.features(images)
        return self.rewards(feats.seg, feats.probs, np.asarray(moas).astype(str))

    def identity(self) -> dict[str, Any]:
        """Segmenter, weights, feature network and reference statistics, as results record them."""
        return {
            "segmenter": self.backend.identity(),
            "weights": {
                "classifier": None
                if self.classifier_card is None
                else self.classifier_card["weights_sha256"],
                "inception": None if self.inception is None else self.inception.sha256,
                "segmenter": self.backend.weights(),
            },
            "feature_network": None if self.inception is None else self.inception.identity(),
            "reference_stats_sha256": self.reference_sha256,
            "artifacts": self.artifact_record(),
        }

    def artifact_record(self) -> dict[str, Any]:
        """The artifact files this scorer read and their set digest
        (:func:`cellbench.artifacts.manifest.set_record`): the reference statistics and, with
        the Inception network, both classifier files. Results record it; the leaderboard ranks
        together only results with the same digest."""
        from cellbench.artifacts.manifest import CLASSIFIER_FILES, set_record

        files = {self.reference_path.name: self.reference_sha256}
        if self.classifier_card is not None:
            files[CLASSIFIER_FILES[0]] = self._classifier_card_sha256
            files[CLASSIFIER_FILES[1]] = self.classifier_card["weights_sha256"]
        return set_record(files)
