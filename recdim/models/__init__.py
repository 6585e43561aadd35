"""Interaction arches, one file each, and the provider + arch composition."""

from recdim.models.base import InteractionArch
from recdim.models.rec_model import RecModel

__all__ = ["InteractionArch", "RecModel"]
