"""Clean-up of binary masks, shared by the seeds, the walker and the S^3-Net clustering."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

__all__ = ["fill_holes", "main_component"]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of ``mask``: ``(H, W) bool -> (H, W) bool``.

    A hole is a False region not 4-connected to the image border, as in ``scipy.ndimage.binary_fill_holes``
    with its default structure (the result is the same, pixel for pixel), found here by one flood fill of the
    background from outside the image instead of repeated binary dilations.
    """
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return outside[1:-1, 1:-1] != 2


def main_component(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Fill holes and keep the component holding most lesion seeds (``(H, W) bool -> (H, W) bool``)."""
    filled = fill_holes(mask)
    labels, n = ndi.label(filled)
    if n <= 1:
        return filled
    votes = np.bincount(labels[seeds], minlength=n + 1)
    votes[0] = 0
    best = int(np.argmax(votes)) if votes.any() else int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return labels == best


def one_lesion(mask: np.ndarray) -> np.ndarray:
    """Fill holes and keep the largest 8-connected component (``(H, W) bool -> (H, W) bool``).

    The prior of ISIC-style masks (one lesion per image, no holes) applied to a predicted mask: it removes the
    dark vignette corners and small blobs a segmenter takes for lesion. Ties go to the lowest label.
    """
    filled = fill_holes(mask)
    labels, n = ndi.label(filled, structure=np.ones((3, 3), bool))
    if n <= 1:
        return filled
    return labels == int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
