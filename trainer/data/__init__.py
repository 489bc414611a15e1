"""Stage 2's data: the shard dataset and sampler, splits, batched multi-crop, colour, CutMix, input normalisation."""
