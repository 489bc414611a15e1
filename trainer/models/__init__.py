"""Stage 2's models: the ViT backbone, the DINO head, the segmentation decoders, the DINO model, the fine-tuned segmenter, the FKD teacher and projector."""
