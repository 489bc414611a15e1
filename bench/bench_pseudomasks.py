"""Pseudo-mask quality and speed against expert masks, and hair removal against synthetic ground truth.

Segmentation (label-free methods; per-image Jaccard, Dice, thresholded Jaccard (< 0.65 counts as 0), s/image):

- ``otsu``: Otsu on grey, lesion = the darker class;
- ``dullrazor+otsu``: classic OpenCV DullRazor (grey black-hat with a 9x9 cross, 3x3 blur, threshold 10,
  ``cv2.inpaint`` radius 6 Telea), then Otsu on grey;
- ``naive_rw``: scikit-image Random Walker (beta 130) on grey with Otsu-derived seeds (darker than the dark
  class mean: lesion; brighter than the bright class mean: skin), probability > 0.5;
- ``ours``: ``pipeline.pseudomask.per_image.make_pseudo_mask`` at its defaults (hair removal, seeds, Random Walker);
- ``s3net``: the same with ``method='s3net'`` (per-image unsupervised clustering after S^3-Net, lesion clusters
  chosen from the coarse lesion map, seeded from ``(0, image id)`` as ``pseudomasks --method s3net`` does).

Data: ``isic_sample`` (all 99; read with ``read_image(path, min_long_side=1024)``) and ``isic2017_256`` (every
4th id, excluding the ids in ``isic_sample``: defaults were tuned on the isic2017 ids outside isic_sample,
so ``isic_sample`` is the held-out figure). Everything is scored at 256x256 squashed, against the expert mask
resized the same way (area interpolation, >= 0.5). Timings include reading nothing; they cover the method on
the image as read (a ~1000-2000 px image for ``isic_sample``).

Hair (synthetic, ``generate_sample(0, i, size=(768, 576))`` for i < 40): hair-mask precision (against the
ground truth dilated 2 px), recall (ground truth covered by the prediction dilated 2 px), strict IoU, and the
mean absolute error (grey levels, mean over RGB) of the cleaned image against ``clean`` on hair pixels.

    python bench/bench_pseudomasks.py            # everything (~5 min on 2 cores)
    python bench/bench_pseudomasks.py --quick    # 20 images per set, 10 hair samples
    python bench/bench_pseudomasks.py --limit 40
    python bench/bench_pseudomasks.py --methods ours,s3net --no-hair --sets isic_sample
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed
from skimage.segmentation import random_walker

from common.datasets import read_image
from pipeline.pseudomask.hair import remove_hair
from pipeline.pseudomask.per_image import PseudoMaskConfig, make_pseudo_mask
from pipeline.run import sample_seed
from pipeline.synth import generate_sample
from trainer.eval.metrics import binary_scores

from timing import stopwatch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 256
METHODS = ("otsu", "dullrazor+otsu", "naive_rw", "ours", "s3net")
LABELS = {"ours": "ours (walker)", "s3net": "S^3-Net (label-free)"}
SETS = ("isic_sample", "isic2017_256")


def _squash(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _otsu_dark(grey: np.ndarray) -> tuple[np.ndarray, float]:
    t, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return grey <= t, float(t)


def dullrazor(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classic OpenCV DullRazor: ``(H, W, 3) uint8 -> (cleaned (H, W, 3) uint8, hair (H, W) bool)``."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    hat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_CROSS, (9, 9)))
    hat = cv2.GaussianBlur(hat, (3, 3), 0)
    _, mask = cv2.threshold(hat, 10, 255, cv2.THRESH_BINARY)
    return cv2.inpaint(image, mask, 6, cv2.INPAINT_TELEA), mask > 0


def segment(method: str, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 -> (256, 256) bool lesion mask by ``method`` (``seed``: s3net only)."""
    if method == "ours":
        return make_pseudo_mask(image, size=SIZE).mask
    if method == "s3net":
        return make_pseudo_mask(image, size=SIZE, config=PseudoMaskConfig(method="s3net"), seed=seed).mask
    if method == "dullrazor+otsu":
        image = dullrazor(image)[0]
    grey = cv2.cvtColor(_squash(image), cv2.COLOR_RGB2GRAY)
    dark, t = _otsu_dark(grey)
    if method in ("otsu", "dullrazor+otsu"):
        return dark
    labels = np.zeros(grey.shape, np.int32)
    lo, hi = grey[dark], grey[~dark]
    if lo.size == 0 or hi.size == 0:
        return dark
    labels[grey <= lo.mean()] = 1
    labels[grey >= hi.mean()] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob = random_walker(grey.astype(np.float64) / 255.0, labels, beta=130, mode="cg_j", tol=1e-3,
                             return_full_prob=True)[0]
    return prob > 0.5


def _truth(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127
    return cv2.resize(mask.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA) >= 0.5


def _score_one(image_path: Path, mask_path: Path, min_long_side: int | None,
               methods: tuple[str, ...] = METHODS) -> dict[str, tuple]:
    image = read_image(image_path, min_long_side=min_long_side)
    truth = _truth(mask_path)
    out = {}
    for method in methods:
        with stopwatch() as watch:
            pred = segment(method, image, seed=sample_seed(0, image_path.stem))
        s = binary_scores(pred, truth)
        out[method] = (s["jaccard"], s["dice"], s["thresholded_jaccard"], watch.seconds)
    return out


def bench_dataset(name: str, pairs: list[tuple[Path, Path]], min_long_side: int | None, jobs: int,
                  methods: tuple[str, ...] = METHODS) -> None:
    rows = Parallel(n_jobs=jobs)(delayed(_score_one)(i, m, min_long_side, methods) for i, m in pairs)
    print(f"\n{name} (n={len(pairs)}, scored at {SIZE}x{SIZE} squashed)")
    print(f"{'method':<22} {'Jaccard':>8} {'Dice':>8} {'thr-Jacc':>8} {'s/image':>8} {'median J':>8} {'J<0.65':>7}")
    for method in methods:
        a = np.array([r[method] for r in rows])
        below = 100 * (a[:, 0] < 0.65).mean()
        print(f"{LABELS.get(method, method):<22} " + " ".join(f"{v:8.3f}" for v in a.mean(axis=0))
              + f" {np.median(a[:, 0]):8.3f} {below:6.1f}%")
    sys.stdout.flush()


def _hair_scores(pred: np.ndarray, truth: np.ndarray, cleaned: np.ndarray, clean: np.ndarray) -> tuple:
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    truth_d = cv2.dilate(truth.astype(np.uint8), disc) > 0
    pred_d = cv2.dilate(pred.astype(np.uint8), disc) > 0
    precision = (pred & truth_d).sum() / max(pred.sum(), 1)
    recall = (truth & pred_d).sum() / max(truth.sum(), 1)
    iou = binary_scores(pred, truth)["jaccard"]
    mae = np.abs(cleaned.astype(np.float32) - clean.astype(np.float32))[truth].mean() if truth.any() else 0.0
    return precision, recall, iou, mae


def _hair_one(index: int) -> dict[str, tuple]:
    s = generate_sample(0, index, size=(768, 576))
    out = {}
    with stopwatch() as ours_watch:
        ours = remove_hair(s.image)
    out["ours"] = _hair_scores(ours.mask, s.hair, ours.cleaned, s.clean) + (ours_watch.seconds,)
    with stopwatch() as dullrazor_watch:
        cleaned, mask = dullrazor(s.image)
    out["dullrazor"] = _hair_scores(mask, s.hair, cleaned, s.clean) + (dullrazor_watch.seconds,)
    return out


def bench_hair(n: int, jobs: int) -> None:
    rows = Parallel(n_jobs=jobs)(delayed(_hair_one)(i) for i in range(n))
    print(f"\nhair removal, synthetic 768x576 (n={n})")
    print(f"{'method':<16} {'prec':>8} {'recall':>8} {'IoU':>8} {'MAE hair':>8} {'s/image':>8}")
    for method in ("dullrazor", "ours"):
        a = np.array([r[method] for r in rows])
        print(f"{method:<16} " + " ".join(f"{v:8.3f}" for v in a.mean(axis=0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="At most this many images per real data set.")
    parser.add_argument("--quick", action="store_true", help="20 images per data set and 10 hair samples.")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers (the machine has 2 cores).")
    parser.add_argument("--data", type=Path, default=DATA, help="Folder holding isic_sample and isic2017_256.")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"Comma-separated segmentation rows to run, of {','.join(METHODS)}. s3net takes "
                             "several seconds per image on a busy 2-core machine.")
    parser.add_argument("--sets", default=",".join(SETS), help=f"Comma-separated real data sets, of {','.join(SETS)}.")
    parser.add_argument("--no-hair", action="store_true", help="Skip the synthetic hair-removal benchmark.")
    parser.add_argument("--all-2017", action="store_true",
                        help="Score every labelled isic2017_256 image (1,962, the 70 shared with isic_sample "
                             "included) instead of every 4th id outside isic_sample.")
    args = parser.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m)
    sets = tuple(s for s in args.sets.split(",") if s)
    for value, allowed, flag in ((methods, METHODS, "--methods"), (sets, SETS, "--sets")):
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(allowed)}")
    limit = 20 if args.quick and args.limit is None else args.limit
    n_hair = 10 if args.quick else 40

    sample = args.data / "isic_sample"
    sample_ids = sorted(p.stem for p in (sample / "images").glob("*.jpg"))
    pairs = [(sample / "images" / f"{i}.jpg", sample / "masks" / f"{i}_segmentation.png") for i in sample_ids]
    if "isic_sample" in sets:
        bench_dataset("isic_sample (held out)", pairs[:limit], 1024, args.jobs, methods)

    d17 = args.data / "isic2017_256"
    excluded = set() if args.all_2017 else set(sample_ids)
    ids = sorted(p.stem for p in (d17 / "images").glob("*.jpg") if p.stem not in excluded)[::1 if args.all_2017 else 4]
    pairs = [(d17 / "images" / f"{i}.jpg", d17 / "masks" / f"{i}_segmentation.png") for i in ids]
    if "isic2017_256" in sets:
        what = "every labelled image" if args.all_2017 else "every 4th id outside isic_sample; tuning data"
        bench_dataset(f"isic2017_256 ({what})", pairs[:limit], None, args.jobs, methods)

    if not args.no_hair:
        bench_hair(n_hair, args.jobs)


if __name__ == "__main__":
    main()
