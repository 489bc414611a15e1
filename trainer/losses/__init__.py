"""Stage 2's losses, one per module: dino, seg, affine, spatial, fkd (each with its formula and a reference-checked test)."""
