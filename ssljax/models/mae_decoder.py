"""Decoders of masked image modeling: MAE's light Transformer decoder and SimMIM's one-layer pixel heads.

MAE decoder (He et al. 2022, facebookresearch/mae ``models_mae.py``): the encoder's output on the visible patches
(its [CLS] token and N_vis patch tokens, width D_enc) is mapped to the decoder width D by a Linear; the full sequence
of N patch positions is rebuilt by putting each visible token back at its patch index and a shared learnable
``mask_token`` at every masked index (:func:`scatter_visible`); the fixed 2-D sin-cos table of the decoder width is
added (zero for [CLS]); ``depth`` pre-norm Transformer blocks and a LayerNorm follow, and a Linear predicts the
p x p x C pixels of every patch. [CLS] is dropped from the output, which is [B, N, p*p*C] in raster order, each
patch flattened as ``vit.patchify`` does (row, column, channel). Initialisation as the reference: xavier-uniform
Linears, zero biases, mask token N(0, 0.02^2).

SimMIM heads (Xie et al. 2022, microsoft/SimMIM ``models/simmim.py``): a 1x1 convolution from the encoder's feature
grid [B, h, w, D] to s*s*C channels followed by a pixel shuffle with stride s = H / h, i.e. a Linear per grid cell
whose output is laid out as that cell's s x s x C pixels (:class:`PixelShuffleHead`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.vit import LN_EPSILON, check_remat, dense_init, sincos_pos_embed_2d, token_init, transformer_blocks

Dtype = Any


def scatter_visible(visible: jax.Array, visible_idx: jax.Array, mask_token: jax.Array, num_patches: int) -> jax.Array:
    """The full token sequence [B, N, D]: row b, position visible_idx[b, j] holds visible[b, j]; every other position
    (the masked patches) holds ``mask_token`` ([D] or broadcastable to it).

    This is MAE's "append mask tokens, then unshuffle with ids_restore", written as a scatter by patch index.
    """
    b, _, d = visible.shape
    full = jnp.broadcast_to(mask_token.reshape(1, 1, d).astype(visible.dtype), (b, num_patches, d))
    rows = jnp.arange(b)[:, None]
    return full.at[rows, visible_idx].set(visible)


def unpatchify(patches: jax.Array, patch_size: int, grid_h: int, grid_w: int, channels: int = 3) -> jax.Array:
    """Inverse of ``vit.patchify``: [B, grid_h * grid_w, p * p * C] -> [B, grid_h * p, grid_w * p, C]."""
    b = patches.shape[0]
    p = patch_size
    x = patches.reshape(b, grid_h, grid_w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid_h * p, grid_w * p, channels)


class MAEDecoder(nn.Module):
    """MAE's decoder (see the module docstring).

    Attributes: dim, depth, num_heads, mlp_ratio (the reference's ViT-B recipe: 512, 8, 16, 4); patch_size and
    channels set the output width p * p * C; grid_h, grid_w the patch grid of the images (N = grid_h * grid_w);
    scan, remat, remat_policy as the ViT encoder's (MAE passes the encoder's ``model.*`` values): scan False keeps
    the blocks as ``block1 .. block{depth}``, True stacks them under ``blocks`` (one ``nn.scan``, equal outputs).

    ``__call__(cls, visible, visible_idx, train=False)``: cls float [B, D_enc] (the encoder's normed [CLS]),
    visible float [B, N_vis, D_enc] (its normed visible patch tokens, in the order of visible_idx), visible_idx int
    [B, N_vis] (their patch indices) -> float32 [B, N, p * p * C].
    """

    dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16
    channels: int = 3
    grid_h: int = 14
    grid_w: int = 14
    dtype: Dtype = jnp.float32
    scan: bool = False
    remat: str = 'none'
    remat_policy: str = 'nothing_saveable'

    @nn.compact
    def __call__(self, cls, visible, visible_idx, train: bool = False):
        check_remat(self.remat, self.remat_policy)
        n = self.grid_h * self.grid_w
        embed = nn.Dense(self.dim, dtype=self.dtype, kernel_init=dense_init, name='embed')
        x = embed(jnp.concatenate([cls[:, None, :], visible], axis=1).astype(self.dtype))
        mask_token = self.param('mask_token', token_init, (1, 1, self.dim), jnp.float32)
        patches = scatter_visible(x[:, 1:], visible_idx, mask_token.astype(self.dtype), n)
        pos = jnp.asarray(sincos_pos_embed_2d(self.dim, self.grid_h, self.grid_w))[None].astype(self.dtype)
        x = jnp.concatenate([x[:, :1], patches + pos], axis=1)  # [CLS] position is zero
        x = transformer_blocks(
            x,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.dim * self.mlp_ratio),
            dtype=self.dtype,
            train=train,
            scan=self.scan,
            remat=self.remat,
            remat_policy_name=self.remat_policy,
        )
        x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='norm')(x)
        out = nn.Dense(self.patch_size**2 * self.channels, dtype=self.dtype, kernel_init=dense_init, name='pred')(x)
        return out[:, 1:].astype(jnp.float32)


class PixelShuffleHead(nn.Module):
    """SimMIM's decoder: 1x1 conv to s*s*C channels + pixel shuffle, [B, h, w, D] -> float32 [B, h*s, w*s, C].

    Cell (i, j)'s s*s*C outputs are its s x s x C pixels in (row, column, channel) order. PyTorch's nn.Conv2d
    default init is not reproduced: the Linear is xavier-uniform with zero bias, as the rest of this library.
    """

    stride: int
    channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, grid, train: bool = False):
        b, h, w, _ = grid.shape
        y = nn.Dense(self.stride**2 * self.channels, dtype=self.dtype, kernel_init=dense_init, name='pred')(
            grid.astype(self.dtype)
        )
        return unpatchify(y.reshape(b, h * w, -1), self.stride, h, w, self.channels).astype(jnp.float32)


class PixelMaskToken(nn.Module):
    """A learnable fill value per input channel for masked pixels (SimMIM on a ResNet, masking at the input):
    x -> x (1 - m) + t m with t in R^C, initialised at 0 (the dataset mean in normalised pixel space)."""

    channels: int = 3

    @nn.compact
    def __call__(self, images, pixel_mask, train: bool = False):
        token = self.param('token', nn.initializers.zeros, (self.channels,), jnp.float32)
        m = pixel_mask[..., None].astype(images.dtype)
        return images * (1 - m) + token.astype(images.dtype) * m
