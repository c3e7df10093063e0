"""Encoders (ResNet, ViT), heads (MLP, LinearPredictor, DINOHead) and the encoder registry."""

from ssljax.models.heads import MLP, DINOHead, LinearPredictor, WeightNormDense, l2_normalize
from ssljax.models.registry import BACKBONES, create_encoder
from ssljax.models.resnet import BasicBlock, Bottleneck, ResNet
from ssljax.models.vit import ViT, patchify, sincos_pos_embed_2d

__all__ = [
    "BACKBONES",
    "create_encoder",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "ViT",
    "patchify",
    "sincos_pos_embed_2d",
    "MLP",
    "LinearPredictor",
    "DINOHead",
    "WeightNormDense",
    "l2_normalize",
]
