"""How good a self-training round's masks are, against expert masks the round never saw (docs/RESULTS.md,
"Self-training").

``shards``: a shard folder (stage 1's, or a round's relabelled ``shards/``) scored at its stored size against
the expert masks of the given folders — mean Jaccard, the share below 0.65, how well the stored confidence ranks
the masks (Spearman) and how many of the failures the 20 % least confident hold; for a relabelled folder also
the walker's and the student's masks alone (the student's through the one-lesion rule, as
``relabel`` compares them), the sources chosen, and the per-image better of the two (an oracle
that uses the labels: the most any choice between them can reach).

``model``: a model (``export.pt`` or ``model.pt``) used with no label on a labelled test folder, as ``predict``
writes full-size masks: alone, with the fixed share 0.15, and with the per-image choice.

    python bench/score_self_training.py shards artifacts/refine/round-2/shards ../shared/data/isic2017_256
    python bench/score_self_training.py model artifacts/refine/round-2/pretrain/export.pt \\
        --test ../shared/data/isic_sample --pool ../shared/data/isic2017_256 --out /tmp/scores
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from scipy import stats

from common import datasets
from pipeline.pseudomask import seeds
from pipeline.shards import ShardReader, shards_to_read
from trainer.data.splits import split_dataset
from trainer.eval.scoring import score_model
from trainer.inference.masks import mask_from_probability

FAIL = 0.65
SOURCES = ("walker", "both", "student")


def _jaccard(mask: np.ndarray, truth: np.ndarray) -> float:
    mask = mask.astype(bool)
    union = (mask | truth).sum()
    return float((mask & truth).sum() / union) if union else 1.0


def _student_mask(sample: dict) -> np.ndarray:
    """The student's mask as ``relabel`` made it: its stored probability through the one-lesion rule."""
    prob = sample["model_prob"].astype(np.float32) / 255.0
    return mask_from_probability(prob, implausible=seeds.implausible_colour(sample["image"]))


def score_shards(folder: Path, labelled: list[Path]) -> None:
    truth = {s.id: s.mask for d in labelled for s in datasets.open_dataset(d).samples if s.mask is not None}
    rows = []
    for path in shards_to_read(folder):
        with ShardReader(path) as shard:
            diag = shard.diagnostics
            for i, sid in enumerate(shard.ids):
                if sid not in truth:
                    continue
                sample = shard[i]
                size = sample["pseudo_mask"].shape[::-1]
                t = cv2.resize(datasets.read_mask(truth[sid]).astype(np.float32), size) >= 0.5
                row = {"j": _jaccard(sample["pseudo_mask"], t), "conf": float(diag["confidence"][i])}
                if "walker_mask" in sample:
                    row |= {"walker": _jaccard(sample["walker_mask"], t), "source": int(diag["source"][i]),
                            "student": _jaccard(_student_mask(sample), t)}
                rows.append(row)
    if not rows:
        raise SystemExit(f"{folder}: no image with an expert mask in {', '.join(map(str, labelled))}")
    j, c = np.array([r["j"] for r in rows]), np.array([r["conf"] for r in rows])
    fail, low = j < FAIL, c <= np.quantile(c, 0.2)
    print(f"{folder}: {len(j)} images with expert masks")
    print(f"  masks      Jaccard {j.mean():.4f}, below {FAIL}: {fail.mean():.1%}")
    print(f"  confidence Spearman with Jaccard {stats.spearmanr(c, j)[0]:.3f}; the 20 % least confident hold "
          f"{int((low & fail).sum())} of {int(fail.sum())} failures ({(low & fail).sum() / max(1, fail.sum()):.1%})")
    if "walker" in rows[0]:
        w, s = np.array([r["walker"] for r in rows]), np.array([r["student"] for r in rows])
        counts = np.bincount([r["source"] for r in rows], minlength=3)
        oracle = np.maximum(w, s)
        print(f"  walker alone {w.mean():.4f}, student alone {s.mean():.4f}, the better of the two per image "
              f"(oracle) {oracle.mean():.4f}, below {FAIL}: {(oracle < FAIL).mean():.1%}")
        print("  sources " + ", ".join(f"{name} {n}" for name, n in zip(SOURCES, counts)))


def score_label_free(model: Path, test: Path, pool: Path, out: Path) -> None:
    splits = split_dataset(datasets.open_dataset([pool]), test=datasets.open_dataset([test], require_masks=True))
    for mode in ("none", "fixed", "choice"):
        m = score_model(model, splits, out / mode, progress=False, fuse=mode != "none",
                        fusion=mode if mode != "none" else "choice")
        print(f"{model} on {test}, fusion {mode}: Jaccard {m['jaccard']:.4f}, Dice {m['dice']:.4f}, "
              f"thr. {m['thresholded_jaccard']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("shards", help="score a shard folder's masks and confidence")
    p.add_argument("folder", type=Path)
    p.add_argument("labelled", type=Path, nargs="+", help="folders with the expert masks")
    p = sub.add_parser("model", help="score a model with no label: alone, fixed share, per-image choice")
    p.add_argument("model", type=Path)
    p.add_argument("--test", type=Path, required=True, help="labelled test folder")
    p.add_argument("--pool", type=Path, required=True, help="the pool it came from (its test ids are left out)")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the predictions")
    args = parser.parse_args()
    if args.what == "shards":
        score_shards(args.folder, args.labelled)
    else:
        score_label_free(args.model, args.test, args.pool, args.out)


if __name__ == "__main__":
    main()
