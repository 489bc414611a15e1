"""``inspect``: what is in a shard or a folder of shards, in words and in a contact sheet."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common import datasets
from common.drawing import draw_contour
from pipeline.pseudomask.cleanup import one_lesion
from pipeline.pseudomask.seeds import implausible_colour
from pipeline.shards import ShardReader, read_manifest, shards_to_read

UNCERTAIN_BAND = (0.1, 0.9)
LOW_CONFIDENCE = 0.2


@dataclass
class ShardSummary:
    n_shards: int = 0
    n_samples: int = 0
    n_no_lesion: int = 0
    schema_versions: set = field(default_factory=set)
    configs: set = field(default_factory=set)
    size: int | None = None
    lesion_fraction: list = field(default_factory=list)
    hair_fraction: list = field(default_factory=list)
    uncertain_fraction: list = field(default_factory=list)
    rejects: list = field(default_factory=list)
    config: dict | None = None
    confidence: list = field(default_factory=list)
    low_confidence: list = field(default_factory=list)   # (id, confidence) below ``threshold``
    threshold: float = LOW_CONFIDENCE
    walker_cut: list = field(default_factory=list)  # stage 1's per-image cut (diag/threshold; absent in older shards)
    # a self-training round's shards (relabel): the student-walker agreement, stage 1's own confidence, the source
    agreement: list = field(default_factory=list)
    walker_confidence: list = field(default_factory=list)
    sources: list = field(default_factory=list)     # 0 walker, 1 both, 2 student (diag/source)
    relabel: dict | None = None                     # manifest.json's record of the model and the pool reference

    def text(self) -> str:
        lines = [f"shards: {self.n_shards}   samples: {self.n_samples}   rejected: {len(self.rejects)}   "
                 f"no lesion found: {self.n_no_lesion}",
                 f"schema version: {', '.join(map(str, sorted(self.schema_versions)))}   "
                 f"storage size: {self.size}x{self.size}   config hash(es): {', '.join(sorted(self.configs))}"]
        for name, values in (("lesion area fraction", self.lesion_fraction),
                             ("hair fraction", self.hair_fraction),
                             (f"uncertain pixels ({UNCERTAIN_BAND[0]} < p < {UNCERTAIN_BAND[1]})",
                              self.uncertain_fraction),
                             ("confidence", [c for c in self.confidence if np.isfinite(c)]),
                             ("student-walker agreement", self.agreement),
                             ("stage 1's own confidence", [c for c in self.walker_confidence if np.isfinite(c)]),
                             ("walker cut", self.walker_cut)):
            if values:
                q = np.quantile(values, [0, 0.1, 0.5, 0.9, 1])
                lines.append(f"{name:>34}: min {q[0]:.3f}  p10 {q[1]:.3f}  median {q[2]:.3f}  "
                             f"p90 {q[3]:.3f}  max {q[4]:.3f}  mean {np.mean(values):.3f}")
        if self.relabel is not None:
            counts = np.bincount(np.asarray(self.sources, int), minlength=3) if self.sources else np.zeros(3, int)
            lines.append(f"relabelled by {self.relabel.get('model', {}).get('path')} (sha256 "
                         f"{str(self.relabel.get('model', {}).get('sha256'))[:12]}...) from "
                         f"{self.relabel.get('source', {}).get('path')}: chosen masks {counts[0]} walker, {counts[1]} "
                         f"both, {counts[2]} student; {len(self.relabel.get('left_out', []))} least confident left "
                         "out of training; confidence = sqrt(stage 1's confidence) x (agreement + sigmoid(lesion score / 3)) / 2")
        if self.confidence and not any(np.isfinite(self.confidence)):
            lines.append("confidence: not stored (shards written before it existed)")
        elif self.confidence:
            lines.append(f"confidence below {self.threshold}: {len(self.low_confidence)} of {len(self.confidence)}"
                         + (" (lowest first)" if self.low_confidence else ""))
            for sid, c in sorted(self.low_confidence, key=lambda x: x[1])[:20]:
                lines.append(f"  low confidence {c:.3f}: {sid}")
            if len(self.low_confidence) > 20:
                lines.append(f"  ... and {len(self.low_confidence) - 20} more")
        if self.config:
            lines.append("config: " + json.dumps(self.config, sort_keys=True)[:600])
        for r in self.rejects[:20]:
            lines.append(f"rejected {r['id']}: {r['reason']}")
        if len(self.rejects) > 20:
            lines.append(f"... and {len(self.rejects) - 20} more rejects")
        return "\n".join(lines)


def summarise(path: str | Path, *, threshold: float = LOW_CONFIDENCE) -> ShardSummary:
    """Read every shard at ``path`` (file or folder) and gather counts and distributions.

    Samples whose confidence (``ShardReader.confidence``) is below ``threshold`` are listed by id.
    """
    paths = shards_to_read(path)
    if not paths:
        raise FileNotFoundError(f"{path}: no shard files (shard-*.h5) found")
    summary = ShardSummary(n_shards=len(paths), threshold=threshold)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    summary.relabel = read_manifest(folder).get("relabel")
    lo, hi = (int(round(b * 255)) for b in UNCERTAIN_BAND)
    for p in paths:
        with ShardReader(p) as shard:
            attrs = shard.attrs
            summary.schema_versions.add(int(attrs["schema_version"]))
            summary.configs.add(str(attrs["config_hash"]))
            summary.size = int(attrs["size"])
            summary.config = shard.config
            summary.rejects += shard.rejects
            n = len(shard)
            summary.n_samples += n
            if n:
                summary.n_no_lesion += int(shard.column("no_lesion").sum())
            confidence = shard.confidence()
            summary.confidence += [float(c) for c in confidence]
            summary.low_confidence += [(sid, float(c)) for sid, c in zip(shard.ids, confidence) if c < threshold]
            diag = shard._file["diag"] if n and "diag" in shard._file else {}
            if "threshold" in diag:
                cuts = shard._file["diag/threshold"][...]
                summary.walker_cut += [float(c) for c, empty in zip(cuts, shard.column("no_lesion")) if not empty]
            for key, values in (("agreement", summary.agreement), ("walker_confidence", summary.walker_confidence),
                                ("source", summary.sources)):
                if key in diag:
                    values += [float(v) for v in diag[key][...]]
            f = shard._file
            for i in range(n):
                summary.lesion_fraction.append(float(f["pseudo_mask"][i].mean()))
                summary.hair_fraction.append(float(f["hair_mask"][i].mean()))
                prob = f["prob"][i]
                summary.uncertain_fraction.append(float(((prob > lo) & (prob < hi)).mean()))
    return summary


def contact_sheet(path: str | Path, png: str | Path, *, n: int = 8) -> Path:
    """Write a contact sheet: original | hair mask | cleaned | probability | pseudo-mask (+ expert) contours.

    Rows are ``n`` samples spread evenly over the shards; for a self-training round's shards (``relabel``), the
    ``n`` least confident, with the student's probability and the walker's and student's masks beside the one
    chosen. The expert contour (green) is drawn when the source image's mask is found beside it
    (``masks/<ID>_segmentation.png`` or the ISIC 2018 layout).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.atomic import save_figure

    paths = shards_to_read(path)
    index = [(p, i) for p in paths for i in range(_rows(p))]
    if not index:
        raise ValueError(f"{path}: the shards hold no samples to show")
    relabelled = _has_maps(paths[0])
    if relabelled:  # a self-training round's shards: the least confident masks, the ones to look at
        confidence = np.concatenate([_confidence(p) for p in paths])
        picks = [index[int(k)] for k in np.argsort(confidence, kind="stable")[:n]]
        cols = ["original", "cleaned", "student probability", "walker (blue) / student (yellow)",
                "chosen (red) / expert (green)"]
    else:
        picks = [index[int(k)] for k in np.linspace(0, len(index) - 1, min(n, len(index)))]
        cols = ["original", "hair mask", "cleaned", "walker probability", "pseudo-mask (red) / expert (green)"]
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.4 * len(cols), 2.4 * len(picks)), squeeze=False)
    for row, (p, i) in enumerate(picks):
        with ShardReader(p) as shard:
            s = shard[i]
        size = s["image"].shape[0]
        original = None
        if Path(s["path"]).is_file():
            try:
                original = cv2.resize(datasets.read_image(s["path"], min_long_side=2 * size), (size, size),
                                      interpolation=cv2.INTER_AREA)
            except datasets.ImageReadError:
                original = None
        overlay = s["image"].copy()
        draw_contour(overlay, s["pseudo_mask"], (255, 40, 40))
        mask_path = datasets.mask_path_for(s["path"])
        if mask_path is not None:
            try:
                truth = datasets.read_mask(mask_path).astype(np.uint8)
                draw_contour(overlay, cv2.resize(truth, (size, size), interpolation=cv2.INTER_NEAREST),
                              (40, 220, 40))
            except datasets.ImageReadError:
                pass
        first = original if original is not None else np.zeros_like(s["image"])
        if relabelled:
            both = s["image"].copy()
            draw_contour(both, s["walker_mask"], (60, 120, 255))
            # the student's mask as the choice saw it: one lesion, plausible colours (trainer.inference.masks)
            student = one_lesion(s["model_prob"] >= 128, implausible=implausible_colour(s["image"]))
            draw_contour(both, student, (255, 220, 0))
            panels = [first, s["image"], s["model_prob"], both, overlay]
        else:
            panels = [first, s["hair_mask"] * 255, s["image"], s["prob"], overlay]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[col], fontsize=8)
            if col == 0:
                ax.set_ylabel(s["id"] + (" (no lesion)" if s["no_lesion"] else ""), fontsize=7)
            if col == 0 and relabelled:
                ax.set_xlabel(f"confidence {_confidence(p)[i]:.2f}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png, dpi=80)


def _has_maps(path: Path) -> bool:
    with ShardReader(path) as shard:
        return "model_prob" in shard._file and "walker_mask" in shard._file


def _confidence(path: Path) -> np.ndarray:
    with ShardReader(path) as shard:
        return np.nan_to_num(shard.confidence(), nan=1.0)


def _rows(path: Path) -> int:
    with ShardReader(path) as shard:
        return len(shard)

