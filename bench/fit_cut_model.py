"""Fit the per-image walker cut (``pipeline/pseudomask/cut.py``) and report its held-out folds.

Protocol (docs/EXPERIMENTS.md, "The learned per-image cut"): the labelled ``isic2017_256`` images outside
``isic_sample``; each runs stage 1 up to the walker (hair removal, seeds, walker: ``cut_rule='fixed'``), and every
threshold of the ladder gives a candidate mask, its ten label-free features and its Jaccard against the expert mask
(at the walker's grid: 256 x 256 for these images). A degree-2 polynomial ridge regression (scikit-learn) predicts
each candidate's Jaccard minus the mean over its image's candidates (only the order within an image matters); an
image's cut is its best-predicted candidate. Folds: ``sha256(id) % 5``; each fold is scored by the model fitted on
the other four. The final model is fitted on all of them, written as JSON (``--out``) and scored on ``isic_sample``
(held out from everything) when ``--check`` names it.

    python bench/fit_cut_model.py --data ../shared/data/isic2017_256 --exclude-from ../shared/data/isic_sample \\
        --check ../shared/data/isic_sample --out pipeline/pseudomask/cut_model.json
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

from common.datasets import open_dataset, read_image, read_mask
from pipeline.pseudomask.cut import CUT_LADDER, FEATURES, candidate_cuts, model_from_sklearn
from pipeline.pseudomask.per_image import (
    PseudoMaskConfig,
    clean_image,
    resize_long,
    segment,
)
from pipeline.pseudomask.seeds import LESION, to_lab
from pipeline.run import RunConfig

FIXED = dataclasses.replace(PseudoMaskConfig(), cut_rule="fixed")


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def candidates_of(sample, config: PseudoMaskConfig = FIXED, pairs: bool = False) -> dict:
    """Stage 1 up to the walker on one labelled image (``config``, fixed cut): the fixed cut's Jaccard and every
    candidate's features and Jaccard; with ``pairs``, also ``"pairs"``: the Jaccard between each two candidates."""
    image = read_image(sample.image, min_long_side=RunConfig().decode_long_side)
    small = resize_long(clean_image(image, config=config).cleaned, config.walker_long_side)
    fov, coarse, separation, labels, prob, mask, _ = segment(small, config=config)
    truth = cv2.resize((read_mask(sample.mask) > 0).astype(np.float32), (small.shape[1], small.shape[0]),
                       interpolation=cv2.INTER_AREA) >= 0.5
    fg = labels == LESION
    row = {"id": sample.id, "fixed": _jaccard(mask, truth), "x": np.zeros((0, len(FEATURES))), "j": np.zeros(0)}
    if fg.any():
        _, masks, x = candidate_cuts(prob, fg, fov, to_lab(small), separation=separation,
                                     coarse_fraction=float(coarse.mean()))
        row.update(x=x, j=np.array([_jaccard(m, truth) for m in masks]))
        if pairs and masks:
            flat = np.stack([m.ravel() for m in masks]).astype(np.float32)
            inter, area = flat @ flat.T, flat.sum(1)
            row["pairs"] = inter / np.maximum(area[:, None] + area[None] - inter, 1)
    return row


def _stack(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    xs = [r["x"] for r in rows if len(r["j"])]
    ys = [r["j"] - r["j"].mean() for r in rows if len(r["j"])]
    return np.concatenate(xs), np.concatenate(ys)


def _fit(rows: list[dict], alpha: float):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    x, y = _stack(rows)
    return make_pipeline(StandardScaler(), PolynomialFeatures(2), StandardScaler(), Ridge(alpha)).fit(x, y)


def fold_of(sample_id: str) -> int:
    """The protocol's fold of an id: ``sha256(id) % 5``."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest(), 16) % 5


def held_out_scores(rows: list[dict], alpha: float, name: str = "fold") -> list[np.ndarray | None]:
    """Each image's candidate scores by the cut model fitted on the other four folds (None: no candidate),
    evaluated as stage 1 evaluates it (:class:`CutModel`)."""
    fold = np.array([fold_of(r["id"]) for r in rows])
    scores: list[np.ndarray | None] = [None] * len(rows)
    for f in range(5):
        model = model_from_sklearn(_fit([r for r, k in zip(rows, fold) if k != f], alpha), name)
        for i in np.where(fold == f)[0]:
            if len(rows[i]["j"]):
                scores[i] = model.score(rows[i]["x"])
    return scores


def chosen(rows: list[dict], scores: list[np.ndarray | None]) -> np.ndarray:
    """Each image's Jaccard with its best-scoring candidate (the fixed cut's when it has none)."""
    return np.array([r["fixed"] if s is None else r["j"][int(np.argmax(s))] for r, s in zip(rows, scores)])


def ceiling(rows: list[dict]) -> np.ndarray:
    """Each image's best candidate chosen with the labels (the fixed cut's when it has none)."""
    return np.array([r["j"].max() if len(r["j"]) else r["fixed"] for r in rows])


def report(name: str, scores: np.ndarray) -> None:
    thr = np.where(scores < 0.65, 0.0, scores)
    print(f"{name:48s} n={len(scores):5d}  mean {scores.mean():.4f}  median {np.median(scores):.3f}  "
          f"thr. {thr.mean():.4f}  < 0.65 {100 * (scores < 0.65).mean():4.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="labelled dataset to fit on (isic2017_256)")
    ap.add_argument("--exclude-from", help="a dataset whose ids are left out (isic_sample)")
    ap.add_argument("--check", help="a held-out labelled dataset scored with the final model")
    ap.add_argument("--out", help="write the final model here (JSON)")
    ap.add_argument("--name", default=PseudoMaskConfig().cut_model, help="the model's name (PseudoMaskConfig.cut_model)")
    ap.add_argument("--alpha", type=float, default=10.0, help="ridge penalty")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    excluded = set(open_dataset(args.exclude_from).ids) if args.exclude_from else set()
    samples = [s for s in open_dataset(args.data).labelled if s.id not in excluded]
    print(f"{len(samples)} labelled images ({len(excluded)} ids excluded), ladder {CUT_LADDER}")
    rows = Parallel(n_jobs=args.jobs, batch_size=8)(delayed(candidates_of)(s) for s in samples)
    held = chosen(rows, held_out_scores(rows, args.alpha, args.name))
    fold = np.array([fold_of(r["id"]) for r in rows])
    for f in range(5):
        print(f"  fold {f}: fixed {np.mean([r['fixed'] for r, k in zip(rows, fold) if k == f]):.4f} -> learned "
              f"{held[fold == f].mean():.4f}")
    report("fixed cut 0.3 (all folds)", np.array([r["fixed"] for r in rows]))
    report("learned cut, held-out folds", held)
    report("best cut of the ladder (oracle, needs labels)", ceiling(rows))
    final = model_from_sklearn(_fit(rows, args.alpha), args.name)
    if args.check:
        check = Parallel(n_jobs=args.jobs, batch_size=8)(delayed(candidates_of)(s)
                                                        for s in open_dataset(args.check).labelled)
        report(f"{Path(args.check).name}: fixed cut 0.3", np.array([r["fixed"] for r in check]))
        report(f"{Path(args.check).name}: learned cut (final model)",
               chosen(check, [final.score(r["x"]) if len(r["j"]) else None for r in check]))
    if args.out:
        Path(args.out).write_text(json.dumps(final.to_json(), indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
