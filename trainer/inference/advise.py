"""Which images to label first: the pool ranked by expected gain (docs/METHOD.md, section 6.6).

A label helps most where the label-free masks are wrong, and the next label helps more when it is unlike those
already chosen. The expected gain of an image is ``1 - confidence`` (the self-training confidence of its
label-free mask, :func:`trainer.inference.choice.confidence_of`: where the student and the walker disagree, or
the mask kept looks unlike the pool's lesions). The images are chosen greedily: each next one maximises its
gain times its distance to the nearest image already chosen (greedy k-centre, in the student's feature space,
the distance capped at the pool's median nearest-neighbour spacing times ``spread``), so the N chosen are
not N copies of one failure. Ties are broken by id: the same model and pool always give the same list.

``advise`` writes ``advise.csv`` (rank, id, confidence, agreement, source, why), ``advise.png`` (the chosen
images with both label-free masks) and ``annotate/``: each chosen image (a copy of the source file) under
``images/`` and its best label-free mask at the image's size under ``masks/<ID>_segmentation.png``, to correct
in an annotation tool rather than draw from nothing. ``finetune --labels-from advise.csv`` then trains on
exactly those images once their masks are corrected.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from common.atomic import save_figure, write_bytes, write_text
from common.drawing import draw_contour
from common.guard import check_out_dir, check_plain_name, output_folder
from common.png import encode_png
from pipeline.pseudomask.cleanup import one_lesion
from pipeline.pseudomask.seeds import implausible_colour
from pipeline.shards import ShardReader, shards_to_read
from trainer.data.normalise import normalise
from trainer.engine.distributed import resolve_device
from trainer.inference.relabel import relabel, relabel_info
from trainer.models.backbone import forward_tokens
from trainer.models.segmenter import load_seg_model

__all__ = ["AdviseResult", "advise", "choose_to_label"]

log = logging.getLogger(__name__)

ADVISE_CSV, ADVISE_PNG, ANNOTATE = "advise.csv", "advise.png", "annotate"
#: Feature distances below this are copies of one image (float rounding of unit vectors).
COPY_DISTANCE = 1e-6
#: The contact sheet shows at most this many of the chosen images.
SHEET_MAX = 24


@dataclass
class AdviseResult:
    out_dir: Path
    chosen: list[dict] = field(default_factory=list)  # one row per chosen image, in rank order
    relabelled: Path | None = None                    # the round's shards made for it (when not given)


def choose_to_label(gain: np.ndarray, features: np.ndarray, ids: list[str], n: int, *,
                    spread: float = 1.0) -> list[int]:
    """Greedy, gain-weighted k-centre: ``n`` row indices of ``features`` in the order chosen.

    ``gain`` (N,) >= 0: what a label of each image is expected to add; ``features`` (N, D): where each image
    lies (the student's view of it). The first is the largest gain; each next maximises ``gain * min(1, d /
    (spread * r))``, ``d`` its distance to the nearest image chosen and ``r`` the median distance of an image to
    its nearest neighbour in the pool: a copy of a chosen image scores about 0. Ties go to the smaller id.
    """
    gain = np.asarray(gain, float)
    x = np.asarray(features, float)
    if len(gain) != len(x) or len(ids) != len(x):
        raise ValueError(f"gain, features and ids: expected the same length, got {len(gain)}, {len(x)}, {len(ids)}")
    n = min(n, len(x))
    if n <= 0:
        return []
    order = np.argsort(np.array(ids, dtype=object), kind="stable")  # the tie-break: smaller id first
    rank_of = np.empty(len(ids), int)
    rank_of[order] = np.arange(len(ids))
    sq = (x * x).sum(1)

    def dist(i: int) -> np.ndarray:  # a copy of image i is at distance 0, not at float rounding from it
        d = np.sqrt(np.maximum(sq + sq[i] - 2 * x @ x[i], 0.0))
        return np.where(d < COPY_DISTANCE, 0.0, d)

    scale = spread * _nearest_spacing(x)
    chosen: list[int] = []
    nearest = np.full(len(x), np.inf)
    for _ in range(n):
        spread_term = np.ones(len(x)) if not chosen else np.minimum(1.0, nearest / max(scale, 1e-12))
        score = gain * spread_term
        score[chosen] = -np.inf
        best = np.flatnonzero(score == score.max())
        pick = int(best[np.argmin(rank_of[best])])
        chosen.append(pick)
        nearest = np.minimum(nearest, dist(pick))
    return chosen


def _nearest_spacing(x: np.ndarray, *, sample: int = 512) -> float:
    """The median distance of an image to its nearest neighbour (on at most ``sample`` evenly spaced rows)."""
    rows = x[np.linspace(0, len(x) - 1, min(sample, len(x))).astype(int)]
    d = np.sqrt(np.maximum((rows * rows).sum(1)[:, None] + (x * x).sum(1)[None] - 2 * rows @ x.T, 0.0))
    d[d < COPY_DISTANCE] = np.inf  # itself (and copies of it) are not its neighbour
    nearest = d.min(axis=1)
    finite = nearest[np.isfinite(nearest)]
    return float(np.median(finite)) if len(finite) else 1.0


def advise(shards: str | Path, out_dir: str | Path, *, n: int, model: str | Path | None = None,
           exclude_ids: Iterable[str] = (), device: str = "auto", progress: bool = True) -> AdviseResult:
    """Rank the pool of ``shards`` for labelling and write the ``n`` to label first (see the module).

    ``shards`` is a relabelled folder (``refine``'s ``round-r/shards`` or ``relabel``'s) — its student, recorded
    there, gives the features unless ``model`` names another — or stage 1's own shards, which ``model`` then
    relabels first (into ``out_dir/relabelled``). ``exclude_ids`` (a test set) are never chosen.
    """
    shards, out_dir = Path(shards), Path(out_dir)
    if n < 1:
        raise ValueError(f"n: expected at least 1 image to choose, got {n}")
    info = relabel_info(shards)
    result = AdviseResult(out_dir)
    source = shards  # what the command reads; out_dir/relabelled is its own making
    read = [source] + ([model] if model is not None else [])
    check_out_dir(out_dir, read)  # before any work: the same rule output_folder applies at the end
    if info is None:
        if model is None:
            raise ValueError(f"{shards}: stage 1's shards hold no student's view; give --model (a pretraining "
                             "export.pt or a model.pt) to relabel them, or pass a refine round's shards")
        result.relabelled = out_dir / "relabelled"
        relabel(shards, model, result.relabelled, device=device, progress=progress)
        shards, info = result.relabelled, relabel_info(result.relabelled)
    model = Path(model) if model is not None else Path(info["model"]["path"])
    rows, images = _pool(shards, set(exclude_ids))
    if not rows:
        raise ValueError(f"{shards}: no image left to advise on (all excluded)")
    features = _features(model, images, device=device, progress=progress)
    gain = np.array([1.0 - r["confidence"] for r in rows])
    picks = choose_to_label(gain, features, [r["id"] for r in rows], n)
    result.chosen = [{"rank": k + 1, **rows[i]} for k, i in enumerate(picks)]
    names = [ADVISE_CSV, ADVISE_PNG] + [f"{ANNOTATE}/images/{Path(r['path']).name}" for r in result.chosen] + \
        [f"{ANNOTATE}/masks/{r['id']}_segmentation.png" for r in result.chosen]
    with output_folder(out_dir, command="advise", names=names, inputs=read):
        write_text(out_dir / ADVISE_CSV, _csv(result.chosen))
        _annotation_folder(shards, result.chosen, out_dir / ANNOTATE)
        _sheet(shards, result.chosen[:SHEET_MAX], out_dir / ADVISE_PNG)
    return result


def _pool(shards: Path, excluded: set[str]) -> tuple[list[dict], list[np.ndarray]]:
    """One row per sample of a relabelled folder (id, path, its label-free masks' numbers, why) and its stored
    image."""
    rows, images = [], []
    for path in shards_to_read(shards):
        with ShardReader(path) as shard:
            diag = shard.diagnostics
            if "agreement" not in diag:
                raise ValueError(f"{path}: not a relabelled shard (no diag/agreement); run 'relabel' or 'refine'")
            for i, sid in enumerate(shard.ids):
                if sid in excluded:
                    continue
                sample = shard[i]
                c, a = float(diag["confidence"][i]), float(diag["agreement"][i])
                source = ("walker", "both", "student")[int(diag["source"][i])]
                rows.append({"id": check_plain_name(sid, source=path), "path": sample["path"],
                             "confidence": round(c, 4), "agreement": round(a, 4), "source": source,
                             "why": _why(a, c, source), "shard": path.name, "row": i})
                images.append(sample["image"])
    return rows, images


def _why(agreement: float, confidence: float, source: str) -> str:
    if agreement < 0.5:
        return (f"the student and the walker disagree (agreement {agreement:.2f}); the {source}'s mask was kept"
                if source != "both" else f"the two masks barely agree ({agreement:.2f})")
    if confidence < 0.5:
        return f"the two masks agree ({agreement:.2f}) but the mask looks unlike the pool's lesions"
    return f"fairly confident ({confidence:.2f}); chosen to cover images unlike the others"


@torch.no_grad()
def _features(model_path: Path, images: list[np.ndarray], *, device: str, progress: bool,
              batch: int = 64) -> np.ndarray:
    """Each image as the student sees it: the mean of its patch tokens and its class token, L2-normalised, at the
    student's training size; a model without a ViT backbone (the U-Net) gives a 16 x 16 colour thumbnail."""
    model, info = load_seg_model(model_path)
    dev = resolve_device(device)
    model.to(dev).eval()
    backbone = getattr(model, "backbone", None)
    out = []
    for start in tqdm(range(0, len(images), batch), desc="advise", unit="batch", disable=not progress):
        chunk = np.stack(images[start:start + batch])
        if backbone is None:
            thumbs = [cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0
                      for im in chunk]
            out.append(np.stack(thumbs))
            continue
        x = normalise(torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous().to(dev), int(info["img_size"]))
        cls, patches = forward_tokens(backbone, x)
        out.append(torch.cat([cls, patches.mean(1)], dim=1).float().cpu().numpy())
    feats = np.concatenate(out).astype(np.float64)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "id", "confidence", "agreement", "source", "why"])
    for r in rows:
        writer.writerow([r["rank"], r["id"], f"{r['confidence']:.4f}", f"{r['agreement']:.4f}", r["source"],
                         r["why"]])
    return buffer.getvalue()


def _annotation_folder(shards: Path, rows: list[dict], folder: Path) -> None:
    """``images/`` (the source files, copied) and ``masks/<ID>_segmentation.png`` (the kept label-free mask at
    the image's original size, 0/255) of the chosen images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for r in rows:
        with ShardReader(shards / r["shard"]) as shard:
            sample = shard[r["row"]]
        height, width = (int(v) for v in sample["orig_shape"])
        mask = cv2.resize(sample["pseudo_mask"].astype(np.float32), (width, height),
                          interpolation=cv2.INTER_LINEAR) >= 0.5
        name = f"{r['id']}_segmentation.png"
        write_bytes(folder / "masks" / name, encode_png(mask.astype(np.uint8) * 255, name))
        source = Path(sample["path"])
        if source.is_file():
            write_bytes(folder / "images" / source.name, source.read_bytes())
        else:
            log.warning("%s: the source image is gone; only its mask is in %s", source, folder)


def _sheet(shards: Path, rows: list[dict], png: Path, *, cols: int = 6) -> Path | None:
    """The chosen images with the walker's (blue) and the student's (yellow) label-free masks."""
    if not rows:
        return None
    import matplotlib  # imported when a picture is drawn, not at start-up (it costs about a second)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = -(-len(rows) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.4 * cols, 2.6 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, r in enumerate(rows):
        with ShardReader(shards / r["shard"]) as shard:
            s = shard[r["row"]]
        image = s["image"].copy()
        draw_contour(image, s["walker_mask"], (60, 120, 255))
        draw_contour(image, one_lesion(s["model_prob"] >= 128, implausible=implausible_colour(s["image"])),
                     (255, 220, 0))
        ax = axes[k // cols, k % cols]
        ax.imshow(image)
        ax.set_title(f"{r['rank']}. {r['id']}\nconfidence {r['confidence']:.2f}", fontsize=7)
    fig.suptitle("to label first: walker (blue), student (yellow)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, png, dpi=72)

