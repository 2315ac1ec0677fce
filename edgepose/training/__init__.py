"""Training (torch): KAPAO targets and loss, COCO/synthetic data with augmentation, the training loop.

Import the submodules directly (``edgepose.training.trainer.train``); nothing heavy is imported here.
"""
