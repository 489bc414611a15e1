"""Stage 1 on the vignette clinic's case (``synth --fov vignette``): how often, and how, it fails.

The images are ``generate_sample(seed, i, fov='vignette')`` at 512 x 384 (``synth``'s default size), written
through a quality-95 JPEG as ``synth`` writes them, then ``make_pseudo_mask`` at its defaults (what
``pseudomasks`` runs). Scored at 256 x 256 squashed against the lesion mask squashed the same way (linear
resize, >= 0.5), as stage 1 stores its masks. A failure is Jaccard < 0.65; "disc" failures are those whose
mask covers 45-73 % of the image, the signature of the clinic's failures (the bright skin inside the lens
vignette taken for lesion, the lesion 4-15 %).

    python bench/bench_vignette.py                        # 48 images, seed 0 (about 20 s on 2 cores)
    python bench/bench_vignette.py --quick                # 12 images
    python bench/bench_vignette.py --sheet /tmp/vig.png   # and a contact sheet of the first 16
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from common.atomic import write_bytes
from pipeline.pseudomask.per_image import _squash, make_pseudo_mask
from common.drawing import draw_contour
from pipeline.synth import JPEG_QUALITY, generate_sample
from timing import stopwatch
from trainer.eval.metrics import binary_scores

FAIL = 0.65
DISC = (0.45, 0.73)      # the clinic's failed masks: 45-73 % of the image
TILE = (192, 144)


def _as_written(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB through a quality-95 JPEG, as ``synth`` writes and ``pseudomasks`` reads it."""
    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def _tile(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, label: str) -> np.ndarray:
    """The image at ``TILE`` with the lesion (green) and stage 1's mask (magenta) outlined, and ``label``."""
    tile = cv2.resize(image, TILE, interpolation=cv2.INTER_AREA)
    for m, colour in ((truth, (40, 230, 40)), (mask, (255, 40, 200))):
        draw_contour(tile, cv2.resize(m.astype(np.uint8), TILE, interpolation=cv2.INTER_NEAREST), colour, 2)
    cv2.putText(tile, label, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def _palette_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3) uint8`` RGB as a 256-colour PNG (about a third of the size of a true-colour one: the
    picture in docs/ stays under 300 KB)."""
    import io

    from PIL import Image  # installed with matplotlib

    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="number of images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="12 images")
    ap.add_argument("--sheet", type=Path, default=None, help="PNG contact sheet of the first 16 images")
    args = ap.parse_args()
    n = 12 if args.quick else args.n

    jaccard, mask_share, lesion_share, tiles = [], [], [], []
    with stopwatch() as watch:
        for i in range(n):
            s = generate_sample(args.seed, i, fov="vignette")
            image = _as_written(s.image)
            mask = make_pseudo_mask(image).mask
            truth = _squash(s.lesion, mask.shape[0], binary=True)
            jaccard.append(binary_scores(mask, truth)["jaccard"])
            mask_share.append(float(mask.mean()))
            lesion_share.append(float(truth.mean()))
            if args.sheet and len(tiles) < 16:
                label = f"{i}: J {jaccard[-1]:.2f}  mask {mask_share[-1]:.0%}  lesion {lesion_share[-1]:.0%}"
                tiles.append(_tile(image, s.lesion, cv2.resize(mask.astype(np.uint8), image.shape[1::-1],
                                                               interpolation=cv2.INTER_NEAREST), label))
    seconds = watch.seconds
    j, m, les = np.array(jaccard), np.array(mask_share), np.array(lesion_share)
    fail = j < FAIL
    disc = fail & (m >= DISC[0]) & (m <= DISC[1])
    print(f"fov='vignette', seed {args.seed}, {n} images at 512x384 ({seconds:.1f} s)")
    print(f"  mean Jaccard {j.mean():.3f}; lesion {les.min():.1%}-{les.max():.1%} of the image")
    print(f"  failures (Jaccard < {FAIL}): {fail.sum()} of {n} ({fail.mean():.0%})")
    if disc.any():
        print(f"  of which the mask covers {DISC[0]:.0%}-{DISC[1]:.0%} of the image: {disc.sum()} (mask "
              f"{m[disc].min():.0%}-{m[disc].max():.0%}, mean {m[disc].mean():.0%}; lesion {les[disc].min():.1%}-"
              f"{les[disc].max():.1%}, mean {les[disc].mean():.1%}; Jaccard {j[disc].mean():.3f})")
    other = fail & ~disc
    if other.any():
        print(f"  other failures: {other.sum()} (mask {', '.join(f'{x:.0%}' for x in m[other])}; "
              f"Jaccard {', '.join(f'{x:.2f}' for x in j[other])})")
    if (~fail).any():
        print(f"  the rest: mean Jaccard {j[~fail].mean():.3f}")
    if args.sheet:
        while len(tiles) % 4:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.vstack([np.hstack(tiles[k:k + 4]) for k in range(0, len(tiles), 4)])
        write_bytes(args.sheet, _palette_png(grid))
        print(f"contact sheet: {args.sheet} ({args.sheet.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
