"""Training (torch): per-family targets and losses (KAPAO, DEKR, SAHR/WAHR), COCO/synthetic data with
augmentation, and one training loop for all three (``families.py`` adapts each family to it).

Import the submodules directly (``edgepose.training.trainer.train``); nothing heavy is imported here.
"""
