"""Grid ceiling: the best mean Jaccard a mask drawn on a g x g grid can reach, and what each preset draws on.

A mask that knows the expert answer but is drawn on a g x g grid: the expert mask (at its original size) is
area-averaged to g x g (``cv2.INTER_AREA`` on the 0/1 mask), resized bilinearly back to the original size and
cut at 0.5, then scored against the expert mask (per-image Jaccard, mean over the images; ISIC's thresholded
Jaccard beside it). It is the budget every preset must respect: a decoder that sees tokens only cannot beat the
ceiling of its token grid, whatever it learns. The decoder's edge path predicts at half the crop size, so its
ceiling is that of a (crop / 2) grid.

    python bench/bench_grid_ceiling.py                     # the 99 isic_sample masks
    python bench/bench_grid_ceiling.py --quick             # the first 20
    python bench/bench_grid_ceiling.py --data /data/isic2018
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from common import datasets
from trainer.eval.metrics import binary_scores

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic_sample"
GRIDS = (6, 7, 12, 14, 24)


def grid_mask(truth: np.ndarray, g: int) -> np.ndarray:
    """``(H, W) bool`` expert mask -> the same mask drawn on a ``g x g`` grid, ``(H, W) bool``."""
    coarse = cv2.resize(truth.astype(np.float32), (g, g), interpolation=cv2.INTER_AREA)
    back = cv2.resize(coarse, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR)
    return back >= 0.5


def preset_grids() -> dict[str, int]:
    """Token grid and edge-path grid of each preset (and of the old 6x6 cpu preset)."""
    from trainer.train.presets import pretrain_preset

    out = {"cpu preset of ViT-Ti/16 at 96 px (before patch 8): tokens": 96 // 16}
    for name in ("cpu", "paper"):
        c = pretrain_preset(name)
        patch = c.patch_size or int(c.arch.split("patch")[1].split("_")[0])
        label = f"{name} ({c.arch}{f', patch {patch}' if c.patch_size else ''}, {c.img_size} px)"
        out[f"{label}: tokens"] = c.img_size // patch
        if c.decoder_skip:
            out[f"{label}: edge path (1/2)"] = c.img_size // 2
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a data folder with expert masks")
    ap.add_argument("--quick", action="store_true", help="the first 20 masks only")
    args = ap.parse_args(argv)
    samples = datasets.open_dataset(args.data, require_masks=True).samples
    if args.quick:
        samples = samples[:20]
    rows = {f"g = {g}": g for g in GRIDS}
    rows.update(preset_grids())
    scores = {name: [] for name in rows}
    for s in tqdm(samples, desc="masks", unit="mask"):
        truth = datasets.read_mask(s.mask).astype(bool)
        for name, g in rows.items():
            scores[name].append(binary_scores(grid_mask(truth, g), truth))
    print(f"{len(samples)} expert masks of {args.data} (mean per image)")
    print(f"{'grid':62s} {'g':>4s} {'Jaccard':>8s} {'thr. Jaccard':>13s}")
    for name, g in rows.items():
        jac = np.mean([r["jaccard"] for r in scores[name]])
        thr = np.mean([r["thresholded_jaccard"] for r in scores[name]])
        print(f"{name:62s} {g:4d} {jac:8.3f} {thr:13.3f}")


if __name__ == "__main__":
    main()
