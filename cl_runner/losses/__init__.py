"""Every loss behind one contract (base.py), one module per family; configs name them as cl_runner.losses.X."""
from cl_runner.losses.base import Loss
from cl_runner.losses.dino import DINOLoss
from cl_runner.losses.imix import IMixBYOLLoss, IMixLoss, IMixMoCoLoss
from cl_runner.losses.infonce import DebiasedNTXentLoss, NPairLoss, NTXentLoss, SupConLoss
from cl_runner.losses.momentum import BYOLLoss, MoCoLoss
from cl_runner.losses.pairwise import ContrastiveLoss, CosineEmbeddingLoss, TripletMarginLoss
from cl_runner.losses.redundancy import BarlowTwinsLoss, VICRegLoss
from cl_runner.losses.siamese import SimSiamLoss
from cl_runner.losses.simclr_alternatives import InBatchMarginLoss, NTLogisticLoss
from cl_runner.losses.supervised import SupervisedLoss
from cl_runner.losses.swav import SwAVLoss

__all__ = ["Loss", "BYOLLoss", "BarlowTwinsLoss", "ContrastiveLoss", "CosineEmbeddingLoss", "DINOLoss",
           "DebiasedNTXentLoss", "IMixBYOLLoss", "IMixLoss", "IMixMoCoLoss", "InBatchMarginLoss", "MoCoLoss",
           "NPairLoss", "NTLogisticLoss", "NTXentLoss", "SimSiamLoss", "SupConLoss", "SupervisedLoss", "SwAVLoss",
           "TripletMarginLoss", "VICRegLoss"]
