"""Helpers both stages use: atomic writes, the guards, the dataset layer, PNG encoding, contour drawing and
S^3-Net's layers. ``common`` imports neither ``pipeline`` nor ``trainer``."""
