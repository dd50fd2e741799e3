"""Whole-volume inference: sliding-window diffusion sampling, revision and segmentation."""
