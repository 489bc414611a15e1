"""How far a label-free mask can be trusted: the agreement of two independent label-free segmentations of the
same image (the student's and stage 1's walker), and the per-mask confidence built on it.

Why agreement: the student and the walker make different errors (the walker follows colour and edges, the
student what the pool's masks look like), so where one fails they mostly disagree (docs/METHOD.md, section 6.2;
the figures in docs/RESULTS.md, "Self-training (round 2)"). The confidence built on it is
:func:`trainer.inference.choice.confidence_of`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["mask_agreement"]


def mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard index of two masks of one image: ``(H, W) bool, (H, W) bool -> float`` in [0, 1].

    ``|a & b| / |a | b|``; two empty masks agree completely (1), an empty and a non-empty one not at all (0).

    Raises
    ------
    ValueError
        The masks differ in shape.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape}: expected the same shape")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union
