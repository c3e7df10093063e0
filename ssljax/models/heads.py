"""Projector / predictor heads: MLP, linear predictor (DirectPred), DINO head.

All heads compute in ``dtype`` with float32 parameters and return float32. Dense layers use ``y = x @ kernel + bias``
with ``kernel`` of shape [in, out] (Flax convention, the transpose of PyTorch's ``weight``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.layers import batch_norm

Dtype = Any

# PyTorch's default Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1 / (3 fan_in).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MLP(nn.Module):
    """Projector / predictor MLP.

    For each hidden width h_i: ``x = relu(BN(Linear_h_i(x)))`` (BN only if ``use_bn``); then ``Linear_out(x)``,
    followed by ``BN(x)`` if ``last_bn`` (without scale and bias if not ``last_bn_affine``, SimSiam / MoCo v3 style).
    BN: batch statistics in train mode (momentum 0.9, eps 1e-5), running averages in eval mode; call
    ``apply(..., mutable=['batch_stats'])`` when training. ``hidden_dims=()`` gives a single Linear.
    Layer names: ``linear_{i}``, ``bn_{i}`` for the hidden layers, ``linear_out``, ``bn_out``.
    Kernels use PyTorch's default Linear init (uniform, variance 1 / (3 fan_in)), biases start at zero.

    Returns float32 [B, out_dim].
    """

    hidden_dims: Sequence[int]
    out_dim: int
    use_bn: bool = True
    last_bn: bool = False
    last_bn_affine: bool = True
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        dense = partial(
            nn.Dense, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=torch_linear_init
        )
        norm = batch_norm(train, self.dtype)
        x = x.astype(self.dtype)
        for i, h in enumerate(self.hidden_dims):
            x = dense(h, name=f"linear_{i}")(x)
            if self.use_bn:
                x = norm(name=f"bn_{i}")(x)
            x = nn.relu(x)
        x = dense(self.out_dim, name="linear_out")(x)
        if self.last_bn:
            x = norm(use_scale=self.last_bn_affine, use_bias=self.last_bn_affine, name="bn_out")(x)
        return x.astype(jnp.float32)


class LinearPredictor(nn.Module):
    """Linear d x d predictor: ``y = x @ kernel`` (+ ``bias`` if ``use_bias``), parameter ``'kernel'`` [d, d].

    Convention: with PyTorch's ``W_p`` (``y = W_p x`` per sample) the kernel is ``W_p^T``; DirectPred's ``W_p`` is
    symmetric, so writing ``params['kernel'] = W_p`` is exact. ``kernel_init`` defaults to the identity, so an
    untouched predictor starts as the identity map (and DirectPred's first write replaces it anyway).
    Input must have last dimension ``dim``. Computes in ``dtype``, returns float32 [..., dim].
    """

    dim: int
    use_bias: bool = False
    kernel_init: Any = None  # None -> identity
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        if x.shape[-1] != self.dim:
            raise ValueError(f"LinearPredictor(dim={self.dim}) got input with last dimension {x.shape[-1]}")
        init = self.kernel_init or (lambda key, shape, dtype=jnp.float32: jnp.eye(shape[0], shape[1], dtype=dtype))
        kernel = self.param("kernel", init, (self.dim, self.dim), jnp.float32)
        y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.dim,), jnp.float32).astype(self.dtype)
        return y.astype(jnp.float32)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """x / max(||x||_2, eps) along ``axis`` (PyTorch's F.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def normalized_last_layer_weight(v: jax.Array) -> jax.Array:
    """Effective DINO last-layer weight V / ||V||_col for a kernel V [in, out] (useful for diagnostics)."""
    return v / jnp.linalg.norm(v, axis=0, keepdims=True)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021).

    ``z = MLP(x)``: Linear(hidden) - GELU - Linear(hidden) - GELU - Linear(bottleneck) for ``num_layers`` = 3
    (optional BN after the hidden Linears), then ``z / ||z||``, then a weight-normalised Linear without bias:
    ``out = z_hat @ (g * V / ||V||_col)`` where ``V`` is ``'last_layer'/'kernel'`` [bottleneck, out_dim] and each
    column (one output unit) is divided by its L2 norm. With ``norm_last_layer`` (default) g = 1 is fixed, so every
    output is a cosine in [-1, 1]; otherwise ``'last_layer'/'g'`` [out_dim] is a trainable parameter initialised to 1.
    Linears init truncated N(0, 0.02^2), zero biases. Returns float32 [B, out_dim].
    """

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.num_layers < 1:
            raise ValueError(f"DINOHead num_layers must be >= 1, got {self.num_layers}")
        dense = partial(
            nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.truncated_normal(0.02)
        )
        x = x.astype(self.dtype)
        for i in range(self.num_layers - 1):
            x = dense(self.hidden_dim, name=f"linear_{i}")(x)
            if self.use_bn:
                x = batch_norm(train, self.dtype)(name=f"bn_{i}")(x)
            x = nn.gelu(x, approximate=False)
        x = dense(self.bottleneck_dim, name="linear_bottleneck")(x)
        z = l2_normalize(x.astype(jnp.float32))
        return WeightNormDense(self.out_dim, learn_scale=not self.norm_last_layer, dtype=self.dtype, name="last_layer")(
            z
        )


class WeightNormDense(nn.Module):
    """Bias-free weight-normalised Linear: ``y = x @ (V / ||V||_col) * g``, V [in, out], norms over the input axis.

    ``g`` [out] is a parameter (init 1) if ``learn_scale``, else the constant 1. Returns float32.
    """

    features: int
    learn_scale: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        v = self.param("kernel", nn.initializers.truncated_normal(0.02), (x.shape[-1], self.features), jnp.float32)
        w = normalized_last_layer_weight(v)
        if self.learn_scale:
            w = w * self.param("g", nn.initializers.ones, (self.features,), jnp.float32)
        return jnp.matmul(x.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)
