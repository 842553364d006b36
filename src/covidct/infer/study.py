"""One study's answer from its slices: lung slices only, the out-of-distribution guard,
the card's aggregation rule.

How a volume (DICOM series, multi-frame DICOM, NIfTI) becomes one answer:

1. Lung slices. Only slices with enough lung-range HU inside the body go to the network
   (``preprocess.lung_slices``): slices of the neck or abdomen say nothing about the lungs and would
   dilute the aggregate. A volume without any is a failure for that study, not a guess from all
   slices: it is most likely not a chest CT (a localizer, a head or abdomen series).
2. Each lung slice is windowed (lung window by default) and prepared like a training slice, then
   scored by the predictor: a probability, or a flag from the out-of-distribution guard.
3. Guard. Flagged slices are left out of the aggregate and counted in ``message``. When more than
   ``MAX_FLAGGED_FRACTION`` of the lung slices are flagged, the study as a whole does not look like
   the training data: it gets the label ``not-ct`` and no probability, as a single flagged image does.
4. Aggregate. The remaining slice probabilities become the study probability by the rule on the
   model card (``Decision.study_aggregate``, chosen on validation data by ``train.study_rule``),
   and the card's threshold gives the label (below it, the other class the used slices find likeliest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from covidct.io.volume import StudyOrigin
from covidct.model.card import ModelCard
from covidct.model.decision import (
    aggregate_slices,
    card_study_rule,
    describe_rule,
    label_at_threshold,
    negative_classes,
)
from covidct.model.ood import NOT_CT_LABEL

if TYPE_CHECKING:  # predictor imports this module
    from covidct.infer.predictor import Prediction

MAX_FLAGGED_FRACTION = 0.5
N_MARKED_SLICES = 3


@dataclass(frozen=True)
class SlicePrediction:
    """One lung slice of a study as the model scored it.

    Attributes:
        name: the slice's label from the volume (file name, or "<file>#<index>").
        index: position along the volume's slice axis (0 = first slice), counting non-lung slices too.
        prob_covid: calibrated probability, or None when the guard flagged the slice.
        label: the slice's own label at the threshold, or ``not-ct``.
        in_distribution: False when the guard flagged the slice (it is left out of the aggregate).
        ood_score: the guard's distance, or None for a model without a guard.
    """

    name: str
    index: int
    prob_covid: float | None
    label: str
    in_distribution: bool = True
    ood_score: float | None = None


@dataclass(frozen=True)
class StudyPrediction:
    """The model's answer for one study (one series or volume), referred to by path and hashed keys only.

    Attributes:
        source: the file or folder the study came from (never a patient attribute).
        study_key: hash of the StudyInstanceUID (see ``io.volume.privacy_key``); series_key likewise.
        prob_covid: the aggregated probability, or None when the study is out of distribution.
        label: the positive class at ``threshold`` or the negative one, or ``not-ct``.
        n_slices_total: slices in the volume; n_slices_used: lung slices in the aggregate.
        aggregate: the rule that made ``prob_covid`` from the slices ("top 25% mean").
        slices: every lung slice scored, in slice order.
        ood_score: median guard distance over the lung slices, or None without a guard.
        message: empty, or what the guard did (slices left out, or why there is no probability).
        cam_slice, cam_heatmap: (S, S) float32 slice and Grad-CAM heatmap of the most suspicious slice,
            when an explanation was asked for (see ``Predictor.explain``); else None.
    """

    source: str
    study_key: str
    series_key: str
    prob_covid: float | None
    label: str
    threshold: float
    n_slices_total: int
    n_slices_used: int
    aggregate: str
    slices: tuple[SlicePrediction, ...]
    in_distribution: bool = True
    ood_score: float | None = None
    message: str = ""
    cam_slice: np.ndarray | None = field(default=None, repr=False, compare=False)
    cam_heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def suspicious_slices(self) -> list[SlicePrediction]:
        """Up to ``N_MARKED_SLICES`` scored slices with the highest probability, highest
        first (ties: lower index)."""
        scored = [s for s in self.slices if s.prob_covid is not None]
        return sorted(scored, key=lambda s: (-s.prob_covid, s.index))[:N_MARKED_SLICES]


def study_prediction(
    origin: StudyOrigin, indices: Sequence[int], slices: Sequence[Prediction], card: ModelCard
) -> StudyPrediction:
    """Aggregate the predictions of a study's lung slices into the study's answer (steps 3 and 4 above).

    Args:
        origin: the study the slices came from (``Volume.origin``).
        indices: (K,) position of each scored slice in the study, K >= 1.
        slices: K predictions, one per index, in the same order.
        card: the model card: threshold, classes and study aggregation rule.
    """
    scored = tuple(
        SlicePrediction(p.path, int(index), p.prob_covid, p.label, p.in_distribution, p.ood_score)
        for index, p in zip(indices, slices, strict=True)
    )
    used = [p for p in slices if p.in_distribution]
    n_flagged = len(scored) - len(used)
    scores = [s.ood_score for s in scored if s.ood_score is not None]
    rule, topk_fraction = card_study_rule(card.decision)
    common = {
        "source": origin.source,
        "study_key": origin.study_key,
        "series_key": origin.series_key,
        "threshold": card.decision.threshold,
        "n_slices_total": origin.n_slices,
        "aggregate": describe_rule(rule, topk_fraction),
        "slices": scored,
        "ood_score": float(np.median(scores)) if scores else None,
    }
    flagged = (
        f"{n_flagged} of {len(scored)} lung slices do not look "
        "like the chest CT slices the model was trained on"
    )
    if n_flagged > MAX_FLAGGED_FRACTION * len(scored):
        message = f"{flagged} (out-of-distribution guard), so the study gets no COVID probability"
        return StudyPrediction(
            prob_covid=None,
            label=NOT_CT_LABEL,
            n_slices_used=0,
            in_distribution=False,
            message=message,
            **common,
        )
    used_prob = np.asarray([p.prob_covid for p in used], dtype=np.float64)
    prob_covid = aggregate_slices(used_prob, rule, topk_fraction=topk_fraction)
    message = f"{flagged} and were left out of the study probability" if n_flagged else ""
    label = label_at_threshold(prob_covid, card, _mean_other_probabilities(used, card))
    return StudyPrediction(
        prob_covid=prob_covid, label=label, n_slices_used=len(used), message=message, **common
    )


def _mean_other_probabilities(used: Sequence[Prediction], card: ModelCard) -> dict[str, float] | None:
    """Each other class's mean probability over the used slices; None with one other class (not needed)."""
    negatives = negative_classes(card)
    if len(negatives) == 1:
        return None
    return {name: float(np.mean([p.probabilities[name] for p in used])) for name in negatives}
