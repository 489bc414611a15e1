"""Stage 2's inference: a saved segmenter applied to images (segment), fused with stage 1's walker probability
(fusion), cut into masks (masks), and a folder of new images segmented (predict)."""
