"""recdim: learn, prune and serve mixed embedding dimensions for TorchRec recommendation models."""

__version__ = "0.1.0"
