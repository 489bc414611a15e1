"""Stage 2's training loops: pretraining (its config, its objective: the loss mix, and the loop), fine-tuning,
the unet-pseudo baseline, and the presets beside their configs."""
