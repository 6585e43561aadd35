"""Native CPU kernels, compiled on first use (``torch.utils.cpp_extension``), with eager fallbacks."""

from recdim.native.loader import native_ops_available

__all__ = ["native_ops_available"]
