"""A lesion probability cut into the predicted mask: ``prob >= 0.5``, then (``one_lesion``) holes filled and one
component kept, weighed by its share of plausible lesion colour."""
from __future__ import annotations

import functools

import numpy as np

from common import datasets
from pipeline.pseudomask import cleanup, seeds
from pipeline.pseudomask.per_image import resize_long

COLOUR_LONG_SIDE = 256  # the grid of implausible_map (the walker's)


def mask_from_probability(prob: np.ndarray, *, one_lesion: bool = True,
                          implausible: np.ndarray | None = None) -> np.ndarray:
    """The predicted mask of a lesion probability map: ``prob >= 0.5``, then, with ``one_lesion``, holes filled
    and only the component with the most centre-weighted area kept (:func:`pipeline.pseudomask.cleanup.one_lesion`),
    each component weighed by its share of plausible lesion colour when ``implausible`` (see
    :func:`implausible_map`) is given.

    ``one_lesion`` is the default of ``finetune`` and ``predict``: it removes the dark vignette corners, lens rims
    (:func:`pipeline.pseudomask.cleanup.without_frame`), stickers and small blobs a segmenter takes for lesion
    (docs/EXPERIMENTS.md, "The one-lesion rule").
    """
    mask = prob >= 0.5
    return cleanup.one_lesion(mask, implausible=implausible) if one_lesion else mask


@functools.lru_cache(maxsize=512)
def implausible_map(path: str) -> np.ndarray:
    """:func:`pipeline.pseudomask.seeds.implausible_colour` of the image at ``path``, at 256 px on its long side
    (field of view and the colours no pigmented lesion has); cached across the cells of a table run."""
    image = resize_long(datasets.read_image(path, min_long_side=COLOUR_LONG_SIDE), COLOUR_LONG_SIDE)
    found = seeds.implausible_colour(image)
    found.flags.writeable = False
    return found
