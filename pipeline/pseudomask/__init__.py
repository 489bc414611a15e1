"""Stage 1's per-image method, without I/O: hair removal, seeds, Random Walker (or S^3-Net clustering), clean-up.

:func:`pipeline.pseudomask.per_image.make_pseudo_mask` runs one image; the orchestration and the files (datasets,
shards, the parallel run, export, reports) are in :mod:`pipeline` beside this package.
"""
