"""Stage 2's evaluation: the ISIC metrics, the linear probe of pretrained features, the pictures of a run, and a
saved model scored on a test split (scoring)."""
