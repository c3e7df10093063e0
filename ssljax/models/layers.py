"""The BatchNorm every network of the package uses, in one place: PyTorch's defaults in Flax's convention.

PyTorch's ``BatchNorm(momentum=0.1, eps=1e-5)`` updates r <- 0.9 r + 0.1 mu; Flax's ``momentum`` is the weight of
the old value, so 0.9. Statistics and the normalisation run in the compute ``dtype``, parameters stay float32.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any) -> partial:
    """``nn.BatchNorm`` with the package's momentum and epsilon, batch statistics in train mode, running ones else."""
    return partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
    )
