"""Clean-up of a binary lesion mask, shared by the walker and the S^3-Net clustering."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["main_component"]


def main_component(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Fill holes and keep the component holding most lesion seeds (``(H, W) bool -> (H, W) bool``)."""
    filled = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(filled)
    if n <= 1:
        return filled
    votes = np.bincount(labels[seeds], minlength=n + 1)
    votes[0] = 0
    best = int(np.argmax(votes)) if votes.any() else int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return labels == best
