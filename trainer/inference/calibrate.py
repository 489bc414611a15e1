"""The few expert labels calibrate the label-free parts on the user's own data (docs/METHOD.md, section 6.7).

Stage 1's per-image cut and the per-image choice were set on ISIC 2017; another clinic's images may want them
elsewhere. With N labelled images of a relabelled pool (``relabel``/``refine``: each holds the student's
probability, the walker's probability and cut, and both masks), three settings are refitted on the labels:

- ``cut_scale``: every image's walker cut is multiplied by it (< 1: this clinic's lesions extend to paler
  borders than the walker's cut keeps);
- ``agree_at`` and ``agree_weight`` of :class:`~trainer.inference.choice.ChoiceConfig`.

Each is searched on a small grid around the shipped default, with shrinkage towards it: a setting ``k`` grid
steps from the default must beat it by ``SHRINK * k / N`` mean Jaccard on the labelled images, and its per-image
gains must pass a one-sided paired t-test at ``SURE``, so a handful of labels moves a setting only when the
images agree on it; fewer than ``MIN_LABELS`` (N = 0 included) keep every default. The gain of each
calibration (the cut alone, the choice alone, both) is measured by leave-one-out cross-validation on the
labelled images themselves (each image scored with the settings fitted on the others), beside the defaults on
the same images; the best of the three is used only when it gains at least ``MIN_CV_GAIN`` there.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from scipy import stats

from common import datasets
from pipeline.pseudomask.cleanup import one_lesion
from pipeline.pseudomask.seeds import implausible_colour
from pipeline.shards import ShardReader, shards_to_read
from trainer.inference.agreement import mask_agreement
from trainer.inference.choice import ChoiceConfig, PoolReference, choose, image_lab, mask_features
from trainer.inference.fusion import fuse_probabilities
from trainer.inference.relabel import relabel_info

__all__ = ["CUT_SCALES", "AGREE_AT", "AGREE_WEIGHTS", "Calibration", "calibrate"]

CUT_SCALES = (0.6, 0.8, 1.0, 1.25, 1.5)
AGREE_AT = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
AGREE_WEIGHTS = (0.0, 0.15, 0.3, 0.5)
#: Mean Jaccard a setting one grid step from the default must gain, times 1 / N (N labelled images).
SHRINK = 0.02
#: A setting's per-image gains over the default must pass a one-sided paired t-test at this level: on a few
#: images a lucky draw must not move a setting (3 random labels moved the cut to x0.6 and lost 1.7 points on
#: isic_sample).
SURE = 0.975
#: Below this many labelled images of the pool the shipped settings are kept (no spread to test a gain with).
MIN_LABELS = 3
#: The leave-one-out gain (mean Jaccard) a calibration must show over the shipped settings to be used: 16
#: labelled images once moved three settings for a cross-validated gain of 0.2 point and lost 2.9 on isic_sample.
MIN_CV_GAIN = 0.01
_DEFAULT = (1.0, ChoiceConfig().agree_at, ChoiceConfig().agree_weight)


@dataclass(frozen=True)
class Calibration:
    """Fitted settings and what they gained. ``cv``: leave-one-out mean Jaccard on the labelled images of
    ``default`` (the shipped settings), ``cut`` (only the cut refitted), ``choice`` (only the choice), ``both``."""

    cut_scale: float = 1.0
    agree_at: float = ChoiceConfig().agree_at
    agree_weight: float = ChoiceConfig().agree_weight
    n_labels: int = 0
    cv: dict = field(default_factory=dict)

    def choice_config(self, base: ChoiceConfig = ChoiceConfig()) -> ChoiceConfig:
        return dataclasses.replace(base, agree_at=self.agree_at, agree_weight=self.agree_weight)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        c = cls(**{k: d[k] for k in ("cut_scale", "agree_at", "agree_weight", "n_labels", "cv") if k in d})
        if not (0.1 <= c.cut_scale <= 10 and 0 <= c.agree_at <= 1 and 0 <= c.agree_weight <= 1):
            raise ValueError(f"calibration out of range: {d}")
        return c

    def line(self) -> str:
        if not self.n_labels:
            return "calibration: no labelled image of the pool; the shipped settings"
        cv = self.cv
        return (f"calibration on {self.n_labels} labelled image(s): cut x{self.cut_scale:g}, agree at "
                f"{self.agree_at:g}, model share {self.agree_weight:g}; leave-one-out mean Jaccard "
                f"{cv.get('default', float('nan')):.3f} with the shipped settings -> cut {cv.get('cut', float('nan')):.3f},"
                f" choice {cv.get('choice', float('nan')):.3f}, both {cv.get('both', float('nan')):.3f}")


@dataclass
class _Labelled:
    """One labelled image of the pool, with what the choice needs at every cut scale."""

    student_prob: np.ndarray
    student_mask: np.ndarray
    student_features: np.ndarray
    walker_prob: np.ndarray | None
    cut: float
    lab: np.ndarray
    implausible: np.ndarray
    truth: np.ndarray
    walker: dict = field(default_factory=dict)  # cut scale -> (mask, features or None)


def calibrate(shards: str | Path, labelled: Sequence[datasets.Sample]) -> Calibration:
    """Refit the cut and the choice on the ``labelled`` images of the relabelled pool ``shards`` (those not in
    the pool are left out); N = 0 returns the shipped settings."""
    info = relabel_info(shards)
    if info is None:
        raise ValueError(f"{shards}: not a relabelled pool (run 'refine' or 'relabel'); stage 1's own shards hold "
                         "no student to calibrate the choice with")
    reference = PoolReference.from_dict(info["reference"])
    items = _load(Path(shards), Path(info["source"]["path"]), {s.id: s for s in labelled if s.mask is not None})
    if not items:
        return Calibration()
    grid = list(itertools.product(CUT_SCALES, AGREE_AT, AGREE_WEIGHTS))
    scores = np.array([[_score(it, setting, reference) for it in items] for setting in grid])  # (settings, N)
    default = grid.index(_DEFAULT)

    def fit(rows: np.ndarray, allowed: list[int]) -> int:
        n = rows.shape[1]
        if n < MIN_LABELS:  # too few labels to tell a gain from the spread between images: the shipped settings
            return default
        gain = rows[allowed] - rows[default]  # (settings, N) per-image gains over the default
        sure = gain.mean(axis=1) - stats.t.ppf(SURE, n - 1) * gain.std(axis=1, ddof=1) / np.sqrt(n)
        penalty = np.array([SHRINK * _steps(grid[k]) / n for k in allowed])
        value = np.where(sure > 0, gain.mean(axis=1) - penalty, -np.inf)
        value[allowed.index(default)] = 0.0
        return allowed[int(np.argmax(value))]

    families = {"cut": [k for k, g in enumerate(grid) if g[1:] == _DEFAULT[1:]],
                "choice": [k for k, g in enumerate(grid) if g[0] == _DEFAULT[0]],
                "both": list(range(len(grid)))}
    cv = {"default": float(scores[default].mean())}
    for name, allowed in families.items():
        held_out = [scores[fit(np.delete(scores, i, axis=1), allowed), i] for i in range(len(items))]
        cv[name] = float(np.mean(held_out))
    # a calibration is used only when it gains on images it was not fitted on: the family with the best
    # leave-one-out mean, if that beats the shipped settings by MIN_CV_GAIN
    family = max(families, key=lambda name: cv[name])
    if cv[family] < cv["default"] + MIN_CV_GAIN:
        return Calibration(n_labels=len(items), cv=cv)
    best = grid[fit(scores, families[family])]
    return Calibration(cut_scale=best[0], agree_at=best[1], agree_weight=best[2], n_labels=len(items), cv=cv)


def _steps(setting: tuple[float, float, float]) -> int:
    """How many grid steps a setting lies from the default, summed over its three parts."""
    return sum(abs(values.index(v) - values.index(d))
               for v, d, values in zip(setting, _DEFAULT, (CUT_SCALES, AGREE_AT, AGREE_WEIGHTS)))


def _load(shards: Path, source: Path, labelled: dict[str, datasets.Sample]) -> list[_Labelled]:
    walker_prob: dict[str, tuple[np.ndarray, float]] = {}
    for path in shards_to_read(source):
        with ShardReader(path) as shard:
            cuts = shard.diagnostics.get("threshold", np.full(len(shard), 0.3))
            for i, sid in enumerate(shard.ids):
                if sid in labelled:
                    walker_prob[sid] = (shard[i]["prob"].astype(np.float32) / 255.0, float(cuts[i]))
    items = []
    for path in shards_to_read(shards):
        with ShardReader(path) as shard:
            for i, sid in enumerate(shard.ids):
                if sid not in labelled:
                    continue
                s = shard[i]
                size = s["image"].shape[0]
                truth = cv2.resize(datasets.read_mask(labelled[sid].mask).astype(np.float32), (size, size),
                                   interpolation=cv2.INTER_LINEAR) >= 0.5
                lab = image_lab(s["image"])
                implausible = implausible_colour(s["image"])
                prob = s["model_prob"].astype(np.float32) / 255.0
                student = one_lesion(prob >= 0.5, implausible=implausible)
                wp, cut = walker_prob.get(sid, (None, 0.3))
                items.append(_Labelled(prob, student, mask_features(student, lab),
                                       None if s["walker_mask"].sum() == 0 else wp, cut, lab, implausible, truth))
    return items


def _walker(item: _Labelled, scale: float) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The walker's mask, its features and its cut at ``scale`` times the image's own cut."""
    cut = float(np.clip(item.cut * scale, 0.02, 0.95))
    if scale not in item.walker:
        if item.walker_prob is None:
            item.walker[scale] = (np.zeros_like(item.truth), None)
        else:
            mask = one_lesion(item.walker_prob >= cut, implausible=item.implausible)
            item.walker[scale] = (mask, mask_features(mask, item.lab) if mask.any() else None)
    return (*item.walker[scale], cut)


def _score(item: _Labelled, setting: tuple[float, float, float], reference: PoolReference) -> float:
    """The Jaccard against the expert mask of the mask the choice keeps under ``setting``."""
    scale, agree_at, weight = setting
    walker, walker_features, cut = _walker(item, scale)
    agreement = mask_agreement(item.student_mask, walker)
    config = ChoiceConfig(agree_at=agree_at, agree_weight=weight)
    choice = choose(agreement, walker_features, item.student_features, reference, config)
    if choice.source == "student":
        mask = item.student_mask
    elif choice.source == "walker":
        mask = walker
    else:
        fused = fuse_probabilities(item.student_prob, item.walker_prob, weight=choice.weight, walker_cut=cut)
        mask = one_lesion(fused >= 0.5, implausible=item.implausible)
    return mask_agreement(mask, item.truth)
