"""Interaction arches, one file each, and the provider + arch composition."""

from recdim.models.base import InteractionArch
from recdim.models.deepfm import DeepFMArch
from recdim.models.dlrm import DLRMArch, DotInteraction
from recdim.models.factory import build_arch
from recdim.models.fm import FactorizationMachine, FirstOrder, FMArch, SecondOrder, fm_second_order
from recdim.models.mf import MFArch
from recdim.models.mlp import MLP, DeepTower, MLPArch, concat_inputs
from recdim.models.neumf import NeuMFArch
from recdim.models.rec_model import RecModel
from recdim.models.wide_deep import WideDeepArch

__all__ = [
    "DLRMArch",
    "DeepFMArch",
    "DotInteraction",
    "FMArch",
    "FactorizationMachine",
    "FirstOrder",
    "InteractionArch",
    "MFArch",
    "DeepTower",
    "MLP",
    "MLPArch",
    "NeuMFArch",
    "RecModel",
    "SecondOrder",
    "WideDeepArch",
    "build_arch",
    "concat_inputs",
    "fm_second_order",
]
