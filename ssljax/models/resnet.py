"""ResNet encoders (He et al. 2016) in Flax linen, torchvision-equivalent layout.

Layout and initialisation follow torchvision's ResNet v1.5 (stride on the 3x3 conv of a Bottleneck), so the
parameter count of the backbone without the classifier matches torchvision exactly (ResNet-18: 11,176,512;
ResNet-50: 23,508,032). Differences that are deliberate:

* Zero-init of the last BatchNorm scale in every residual block (torchvision's ``zero_init_residual=True``), so that
  each block starts as the identity.
* Two stems: ImageNet (7x7 conv stride 2, pad 3, then 3x3 max-pool stride 2, pad 1) and CIFAR (3x3 conv stride 1,
  no max-pool) padded by ``cifar_stem_padding``: 1 by default (32 x 32 maps from 32 px, SimCLR's CIFAR ResNet), 2 as
  solo-learn (solo/methods/base.py: ``nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2)``, 34 x 34 maps).
* BatchNorm running statistics use Flax's convention (biased batch variance in the running average) where PyTorch
  stores the unbiased one; momentum 0.9 here equals PyTorch's momentum 0.1.

BatchNorm in train mode normalises with the statistics of the batch the module sees. Under ``jax.jit`` over a mesh
with the batch sharded along an axis, that batch is the *global* batch, so the statistics are global without any
``axis_name``/``pmean``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssljax.models.layers import batch_norm
from ssljax.models.vit import check_remat, remat_policy

Dtype = Any

# Kaiming normal, fan_out mode, gain sqrt(2) (ReLU), untruncated: torchvision's conv init.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric 'same'-style padding (k // 2 each side), as PyTorch's padding=k//2 (differs from SAME at stride 2)."""
    return ((k // 2, k // 2), (k // 2, k // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convs: y = relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)); used by ResNet-18/34.

    The shortcut is the identity, or a strided 1x1 conv + BN when the shape changes. Output width = ``width``.
    """

    width: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=conv_kernel_init)
        norm = batch_norm(train, self.dtype)
        y = conv(self.width, (3, 3), strides=self.stride, padding=_pad(3), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.width, (3, 3), padding=_pad(3), name="conv2")(y)
        y = norm(scale_init=nn.initializers.zeros, name="bn2")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.width:
            shortcut = conv(self.width, (1, 1), strides=self.stride, padding="VALID", name="downsample_conv")(x)
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, v1.5) -> 1x1 expand to 4 * width, plus shortcut; used by ResNet-50."""

    width: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=conv_kernel_init)
        norm = batch_norm(train, self.dtype)
        out_width = self.width * self.expansion
        y = conv(self.width, (1, 1), padding="VALID", name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.width, (3, 3), strides=self.stride, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(out_width, (1, 1), padding="VALID", name="conv3")(y)
        y = norm(scale_init=nn.initializers.zeros, name="bn3")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_width:
            shortcut = conv(out_width, (1, 1), strides=self.stride, padding="VALID", name="downsample_conv")(x)
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet backbone without classifier.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: ``BasicBlock`` or ``Bottleneck``.
      widths: base width of each stage (stage i > 0 starts with stride 2); default (64, 128, 256, 512).
      stem_width: output channels of the stem conv (64 for the standard nets).
      cifar_stem: 3x3 stride-1 stem without max-pool (True) or 7x7 stride-2 stem + 3x3/2 max-pool (False).
      cifar_stem_padding: zero padding on each side of the CIFAR stem's conv (1: same size; 2: solo-learn's).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
      remat: 'none' (default) or 'block': every residual block is rematerialised in the backward pass
        (``nn.remat``; parameter and batch-statistics names unchanged), saving what ``remat_policy`` (a name of
        ``jax.checkpoint_policies``, default 'nothing_saveable') allows.

    ``__call__(x, train=True, mask=None)`` takes float images [B, H, W, C] (already normalised) and returns
    ``{'pooled': float32 [B, feature_dim], 'feature_map': float32 [B, h, w, feature_dim]}`` where ``pooled`` is the
    spatial mean of the last stage's output. ``mask`` exists only for signature parity with the ViT and must be None.
    In train mode call ``apply(..., mutable=['batch_stats'])``; in eval mode the running statistics are used.
    """

    stage_sizes: Sequence[int]
    block: type[nn.Module] = BasicBlock
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    cifar_stem: bool = False
    cifar_stem_padding: int = 1
    dtype: Dtype = jnp.float32
    remat: str = "none"
    remat_policy: str = "nothing_saveable"

    @property
    def feature_dim(self) -> int:
        """Channels of the last stage: widths[-1] * block.expansion."""
        return self.widths[-1] * self.block.expansion

    @nn.compact
    def __call__(self, x, train: bool = True, mask=None) -> dict:
        if mask is not None:
            raise ValueError("ResNet does not support patch masks (mask must be None); use a ViT encoder")
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images [B, H, W, C], got shape {x.shape}")
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} differ in length")
        x = x.astype(self.dtype)
        kernel, stride = (3, 1) if self.cifar_stem else (7, 2)  # CIFAR: 3x3/1, no max-pool; ImageNet: 7x7/2
        pad = self.cifar_stem_padding if self.cifar_stem else kernel // 2
        if pad < 0:
            raise ValueError(f"cifar_stem_padding must be >= 0, got {pad}")
        x = nn.Conv(
            self.stem_width,
            (kernel, kernel),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_kernel_init,
            name="stem_conv",
        )(x)
        x = batch_norm(train, self.dtype)(name="stem_bn")(x)
        x = nn.relu(x)
        if not self.cifar_stem:
            # max_pool pads with -inf, like PyTorch's MaxPool2d(3, 2, padding=1).
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        check_remat(self.remat, self.remat_policy)
        block = self.block
        if self.remat == "block":  # argument 0 is the module, 1 the input, 2 the static train flag
            block = nn.remat(block, policy=remat_policy(self.remat_policy), static_argnums=(2,))
        for s, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for b in range(n_blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                x = block(width=width, stride=stride, dtype=self.dtype, name=f"stage{s + 1}_block{b + 1}")(x, train)
        feature_map = x.astype(jnp.float32)
        pooled = jnp.mean(feature_map, axis=(1, 2))
        return {"pooled": pooled, "feature_map": feature_map}


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
# Test-size net: stem width 8, two basic stages of width 8 and 16, one block each; feature_dim 16.
ResNetTiny = partial(ResNet, stage_sizes=(1, 1), block=BasicBlock, widths=(8, 16), stem_width=8)
# A small ResNet for the embedded 28x28 default on CPUs: three stages of one block, widths 32-64-128.
ResNetMini = partial(ResNet, stage_sizes=(1, 1, 1), block=BasicBlock, widths=(32, 64, 128), stem_width=32)
