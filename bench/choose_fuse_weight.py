"""Choose the fusion weight (``finetune --fuse-weight``) on held-out labelled images, never on the test set.

For each fine-tuned cell given (a folder with ``model.pt`` and ``subset.json``, as ``finetune`` and ``table``
write them), the cell's own validation images (labelled, never trained on; ``subset.json``'s ``validation``)
are segmented once by the model; the probability is then fused with stage 1's walker probability at every weight
of ``--weights`` (:func:`trainer.inference.fusion.fuse_probabilities`, calibrated at each image's own cut), cut into a
mask as ``finetune`` does (one lesion, the colour check) and scored against the expert mask. Weight 0 is the walker
alone (calibrated), 1 the model alone. Prints the mean Jaccard per weight and cell, and the mean over cells.

    python bench/choose_fuse_weight.py --data ../shared/data/isic2017_256 \\
        --cells TABLE/cells/ours+semi-frac0.01-seed0 TABLE/cells/ours+semi-frac0.01-seed1 ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import datasets
from trainer.eval.metrics import binary_scores
from trainer.inference.fusion import fuse_probabilities, walker_cut, walker_probability
from trainer.inference.masks import implausible_map, mask_from_probability
from trainer.inference.segment import predict_image
from trainer.models.segmenter import load_seg_model

WEIGHTS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0)


def score_cell(cell: Path, samples: dict[str, datasets.Sample], weights: tuple[float, ...], *,
               progress: bool = True) -> np.ndarray:
    """``(n_validation, len(weights))`` Jaccard of the cell's model fused at each weight, on its validation ids."""
    model, info = load_seg_model(cell / "model.pt")
    size = int(json.loads((cell / "metrics.json").read_text())["predict_size"])
    ids = json.loads((cell / "subset.json").read_text())["validation"]
    missing = [i for i in ids if i not in samples]
    if missing:
        raise SystemExit(f"{cell}: {len(missing)} validation id(s) not in --data, e.g. {missing[0]}")
    device = torch.device("cpu")
    rows = []
    for i in tqdm(ids, desc=cell.name, unit="img", disable=not progress, leave=False):
        s = samples[i]
        prob = predict_image(model, s.image, size=size, device=device)
        walker, cut = walker_probability(str(s.image)), walker_cut(str(s.image))
        truth = datasets.read_mask(s.mask)
        implausible = implausible_map(str(s.image))
        rows.append([binary_scores(mask_from_probability(fuse_probabilities(prob, walker, weight=w, walker_cut=cut),
                                                         implausible=implausible), truth)["jaccard"]
                     for w in weights])
    return np.asarray(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Labelled folder holding the cells' validation ids.")
    parser.add_argument("--cells", type=Path, nargs="+", required=True, help="Fine-tuned cell folders.")
    parser.add_argument("--weights", type=str, default=",".join(map(str, WEIGHTS)),
                        help="Comma-separated model weights to try (0 = walker alone, 1 = model alone).")
    args = parser.parse_args()
    weights = tuple(float(w) for w in args.weights.split(","))
    samples = {s.id: s for s in datasets.open_dataset(args.data).samples if s.mask is not None}
    table = {cell: score_cell(cell, samples, weights) for cell in args.cells}
    head = "".join(f"{w:>8.2f}" for w in weights)
    print(f"mean Jaccard on each cell's validation ids; columns: the model's weight\n{'cell':40s}{head}")
    for cell, rows in table.items():
        name = f"{cell.parent.parent.name}/{cell.name}"[-40:]
        print(f"{name:40s}" + "".join(f"{v:8.4f}" for v in rows.mean(0)) + f"   (n={len(rows)})")
    means = np.mean([rows.mean(0) for rows in table.values()], axis=0)
    print(f"{'mean over cells':40s}" + "".join(f"{v:8.4f}" for v in means))
    print(f"best weight: {weights[int(np.argmax(means))]}")


if __name__ == "__main__":
    main()
