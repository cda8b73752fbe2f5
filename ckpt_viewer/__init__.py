"""ckpt-viewer: look inside PyTorch checkpoints without running them."""

__version__ = "0.1.0"
