"""Interaction arches, one file each, and the provider + arch composition."""

from recdim.models.autoint import AutoIntArch, InteractingLayer
from recdim.models.base import InteractionArch
from recdim.models.deepfm import DeepFMArch
from recdim.models.dlrm import DLRMArch, DotInteraction
from recdim.models.factory import build_arch
from recdim.models.fields import DenseFields
from recdim.models.fm import FactorizationMachine, FirstOrder, FMArch, SecondOrder, fm_second_order
from recdim.models.lr import LRArch
from recdim.models.mf import MFArch
from recdim.models.mlp import MLP, DeepTower, MLPArch, concat_inputs
from recdim.models.neumf import NeuMFArch
from recdim.models.nfm import NFMArch, bi_interaction
from recdim.models.pnn import OuterProductSum, PNNArch
from recdim.models.rec_model import RecModel
from recdim.models.wide_deep import WideDeepArch

__all__ = [
    "AutoIntArch",
    "DLRMArch",
    "DeepFMArch",
    "DeepTower",
    "DenseFields",
    "DotInteraction",
    "FMArch",
    "FactorizationMachine",
    "FirstOrder",
    "InteractingLayer",
    "InteractionArch",
    "LRArch",
    "MFArch",
    "MLP",
    "MLPArch",
    "NFMArch",
    "NeuMFArch",
    "OuterProductSum",
    "PNNArch",
    "RecModel",
    "SecondOrder",
    "WideDeepArch",
    "bi_interaction",
    "build_arch",
    "concat_inputs",
    "fm_second_order",
]
