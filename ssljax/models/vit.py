"""Vision Transformer encoder (Dosovitskiy et al. 2021) in Flax linen, with MAE / SimMIM style patch masking.

Architecture as timm's / MAE's ViT: non-overlapping patch embedding (a Linear on flattened p x p x C patches, the same
map as a stride-p conv), a [CLS] token, pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` with exact GELU and
MLP ratio 4, LayerNorm eps 1e-6, and a final LayerNorm. Initialisation: xavier-uniform Linears (patch embedding
included, on its [p*p*C, D] matrix), zero biases, [CLS] and mask token N(0, 0.02^2) truncated at 2 sigma.

Positional embeddings (``pos_embed``):
  * ``'sincos'`` (default, MAE's): fixed 2-D sine-cosine table, zero for [CLS]. It is not a parameter; it is computed
    for the grid of the input actually seen, so crops of any size divisible by ``patch_size`` (e.g. DINO's 96 px local
    crops) get exact positions.
  * ``'learned'``: a parameter [1 + N, D] for the grid of ``image_size``, init N(0, 0.02^2); other grids get a bilinear
    resize of the patch part (DINO's interpolation).

Because the sin-cos table is not a parameter, ViT-S/16 at 224 has 21,590,016 parameters: timm's vit_small_patch16_224
without its classifier has 21,665,664, the difference being its learned 197 x 384 = 75,648 position table.

Masking (``mask`` bool [B, N_patches], True = masked):
  * ``mask_mode='drop'`` (MAE): positions are added first, then only the visible patches are kept. Every sample must
    have the same number of visible patches. They are gathered with a stable argsort of the mask, so the visible
    patches stay in raster order, and their indices are returned as ``'visible_idx'`` [B, N_visible].
    Under ``jit`` the mask is abstract, so pass ``num_visible=`` (e.g. ``N - int(N * mask_ratio)``); with a concrete
    mask it is read off the mask and checked.
  * ``mask_mode='token'`` (SimMIM): masked patch embeddings are replaced by a learnable ``mask_token`` before the
    positions are added; all N patches are kept.

Stochastic depth (``drop_path_rate``, timm's DropPath): in training, block i's two residual branches are each
dropped per sample with probability r_i = drop_path_rate * i / (depth - 1) (timm's linear rule, 0 for the first
block) and the kept ones scaled by 1 / (1 - r_i), i.e. x + b(x) -> x + (keep / (1 - r_i)) b(x),
keep ~ Bernoulli(1 - r_i) per sample. It needs a ``'dropout'`` rng when ``train`` and the rate > 0
(``apply(..., rngs={'dropout': key})``); 0 (the default) changes nothing and needs no rng.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssljax import checkpoint

Dtype = Any

dense_init = nn.initializers.xavier_uniform()
token_init = nn.initializers.truncated_normal(stddev=0.02)
LN_EPSILON = 1e-6


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2-D sine-cosine positional table [grid_h * grid_w, dim] in raster order (MAE's construction).

    Half of the channels encode the column index w, half the row index h; each half is
    [sin(pos * omega_k), cos(pos * omega_k)] with omega_k = 1 / 10000^(k / (dim/4)), k = 0 .. dim/4 - 1.
    ``dim`` must be divisible by 4.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos positional embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    hh, ww = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")

    def one_axis(pos):
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(ww), one_axis(hh)], axis=1).astype(np.float32)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C], patches in raster order, each flattened as (row, col, channel)."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def _static_num_visible(mask, num_visible):
    """Number of visible patches per sample as a Python int; checks it against a concrete mask."""
    try:
        counts = np.asarray((~mask).sum(axis=1))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        counts = None  # Abstract mask under jit: trust num_visible.
    if counts is not None:
        if counts.size and np.any(counts != counts[0]):
            raise ValueError(f"mask must leave the same number of visible patches in every sample, got {counts}")
        n = int(counts[0]) if counts.size else 0
        if num_visible is not None and num_visible != n:
            raise ValueError(f"num_visible={num_visible} but the mask leaves {n} visible patches per sample")
        return n
    if num_visible is None:
        raise ValueError("mask is abstract (under jit): pass num_visible= (visible patches per sample)")
    return int(num_visible)


class Attention(nn.Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(d_head)) V over all tokens, then a Linear projection."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
        qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=dense_init, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads), 3, axis=2)
        # jax.nn.dot_product_attention takes [B, T, heads, d_head] and does the softmax in float32.
        y = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        return nn.Dense(d, dtype=self.dtype, kernel_init=dense_init, name="proj")(y.reshape(b, n, d))


def drop_path(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
    """Per-sample stochastic depth of a branch x [B, ...]: x keep_b / (1 - rate), keep_b ~ Bernoulli(1 - rate).

    ``rate`` is a Python float (0 returns x untouched) or a traced scalar (the scanned blocks' per-layer rate; a
    traced 0 keeps every sample, x / 1).
    """
    if isinstance(rate, (int, float)) and rate <= 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """timm's linear stochastic-depth rule: block i (0-based) drops with drop_path_rate * i / (depth - 1)."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


def _block_body(x, num_heads: int, mlp_dim: int, dtype, branch):
    """The pre-norm block's layers, created in the calling module's scope (Block, or one layer of the scan)."""
    d = x.shape[-1]
    ln = partial(nn.LayerNorm, epsilon=LN_EPSILON, dtype=dtype)
    x = x + branch(Attention(num_heads, dtype=dtype, name="attn")(ln(name="norm1")(x)))
    y = ln(name="norm2")(x)
    y = nn.Dense(mlp_dim, dtype=dtype, kernel_init=dense_init, name="fc1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(d, dtype=dtype, kernel_init=dense_init, name="fc2")(y)
    return x + branch(y)


def _mlp_width(dim: int, mlp_ratio: float, mlp_dim: int) -> int:
    return mlp_dim if mlp_dim > 0 else int(dim * mlp_ratio)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with MLP = Linear(4D) - GELU - Linear(D).

    ``drop_path`` > 0 drops each residual branch per sample in training (see :func:`drop_path`; needs a 'dropout'
    rng); ``__call__(x, train=False)`` by default, so a block called without ``train`` is deterministic.
    ``mlp_dim`` > 0 sets the MLP's hidden width directly (ViT-g/14's 6144), otherwise it is ``int(D * mlp_ratio)``.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0
    mlp_dim: int = 0

    @nn.compact
    def __call__(self, x, train: bool = False):
        active = train and self.drop_path > 0.0
        branch = lambda y: drop_path(y, self.drop_path, self.make_rng("dropout")) if active else y  # noqa: E731
        mlp_dim = _mlp_width(x.shape[-1], self.mlp_ratio, self.mlp_dim)
        return _block_body(x, self.num_heads, mlp_dim, self.dtype, branch)


class ScannedBlock(nn.Module):
    """One layer of the scanned stack: ``(x, rate) -> (block(x), None)``, the body ``nn.scan`` repeats.

    The same layers as :class:`Block` (so a stacked parameter tree is the unrolled blocks' trees stacked on a leading
    axis, :func:`stack_blocks`); the drop-path ``rate`` is this layer's entry of the scanned rate vector and the
    'dropout' rng is split per layer by the scan. ``drop_path`` (static) only says whether any layer drops.
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    drop_path: bool = False
    train: bool = False

    @nn.compact
    def __call__(self, x, rate):
        active = self.train and self.drop_path
        branch = lambda y: drop_path(y, rate, self.make_rng("dropout")) if active else y  # noqa: E731
        return _block_body(x, self.num_heads, self.mlp_dim, self.dtype, branch), None


REMAT_MODES = ("none", "block")


def remat_policy(name: str):
    """``jax.checkpoint_policies.<name>`` for a policy that takes no arguments; ValueError listing them otherwise."""
    policy = getattr(jax.checkpoint_policies, name, None) if name in REMAT_POLICIES else None
    if policy is None:
        raise ValueError(f"unknown remat policy {name!r}; known: {', '.join(REMAT_POLICIES)}")
    return policy


# The argument-free policies of jax.checkpoint_policies (the others, e.g. save_only_these_names, are factories).
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "checkpoint_dots",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots_with_no_batch_dims",
)


def check_remat(remat: str, policy: str) -> None:
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_MODES)}, got {remat!r}")
    remat_policy(policy)


class ViT(nn.Module):
    """ViT encoder without classifier.

    Attributes:
      dim, depth, num_heads, mlp_ratio: width, blocks, heads, MLP expansion.
      patch_size: side of the square patches; input H and W must be multiples of it.
      image_size: side of the training images; sets the learned positional table (checked to divide by patch_size).
      pos_embed: 'sincos' (fixed, default) or 'learned'.
      pool: 'cls' ([CLS] token after the final LayerNorm, default) or 'mean' (mean of the returned patch tokens).
      mask_mode: 'drop' (MAE, keep visible patches only) or 'token' (SimMIM, learnable mask token).
      drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks; 0: off, the default).
      dtype: compute dtype; parameters are float32.
      mlp_dim: hidden width of the MLPs when > 0 (ViT-g/14: 6144); 0 (default): ``int(dim * mlp_ratio)``.
      remat: 'none' (default) or 'block': every block is rematerialised in the backward pass (``nn.remat``), keeping
        only what ``remat_policy`` (a name of ``jax.checkpoint_policies``, default 'nothing_saveable') saves.
      scan: False (default): blocks are a Python loop, parameters ``block1 .. block{depth}``. True: one
        ``nn.scan`` over the blocks (compiled once, not ``depth`` times), parameters stacked on a leading axis of
        size depth under ``blocks`` (:func:`stack_blocks` / :func:`unstack_blocks` convert; checkpoints convert
        on restore). Outputs and gradients equal the loop's; stochastic depth uses per-layer rngs split by the scan
        (other random draws than the loop's, the same distribution).

    ``__call__(x, train=True, mask=None, num_visible=None)`` takes float images [B, H, W, C] and returns
    ``{'pooled': float32 [B, dim], 'tokens': float32 [B, N, dim]}`` (patch tokens after the final norm, [CLS]
    excluded) and ``'cls'`` float32 [B, dim] ([CLS] after the final norm, whatever ``pool``), plus ``'visible_idx'``
    int32 [B, N_visible] when a mask is given in 'drop' mode, in which case ``tokens`` holds only the visible patches
    (N = N_visible), in raster order. ``train`` turns on stochastic depth when ``drop_path_rate`` > 0 (otherwise
    it changes nothing).
    """

    dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    image_size: int = 224
    mlp_ratio: float = 4.0
    pos_embed: str = "sincos"
    pool: str = "cls"
    mask_mode: str = "drop"
    dtype: Dtype = jnp.float32
    drop_path_rate: float = 0.0
    mlp_dim: int = 0
    remat: str = "none"
    remat_policy: str = "nothing_saveable"
    scan: bool = False

    @property
    def feature_dim(self) -> int:
        """Width of 'pooled': dim."""
        return self.dim

    def _check_config(self):
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.mask_mode not in ("drop", "token"):
            raise ValueError(f"mask_mode must be 'drop' or 'token', got {self.mask_mode!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        check_remat(self.remat, self.remat_policy)

    def _positions(self, grid_h: int, grid_w: int):
        """Returns (cls_pos [1, 1, D], patch_pos [1, grid_h * grid_w, D]) in float32."""
        if self.pos_embed == "sincos":
            table = jnp.asarray(sincos_pos_embed_2d(self.dim, grid_h, grid_w))
            return jnp.zeros((1, 1, self.dim), jnp.float32), table[None]
        g = self.image_size // self.patch_size
        table = self.param("pos_embed", token_init, (1, 1 + g * g, self.dim), jnp.float32)
        cls_pos, patch_pos = table[:, :1], table[:, 1:]
        if (grid_h, grid_w) != (g, g):
            grid = patch_pos.reshape(g, g, self.dim)
            grid = jax.image.resize(grid, (grid_h, grid_w, self.dim), method="bilinear")
            patch_pos = grid.reshape(1, grid_h * grid_w, self.dim)
        return cls_pos, patch_pos

    @nn.compact
    def __call__(self, x, train: bool = True, mask=None, num_visible: int | None = None) -> dict:
        self._check_config()
        if x.ndim != 4:
            raise ValueError(f"ViT expects images [B, H, W, C], got shape {x.shape}")
        b, h, w, _ = x.shape
        grid_h, grid_w = h // self.patch_size, w // self.patch_size
        n = grid_h * grid_w
        tokens = patchify(x.astype(self.dtype), self.patch_size)
        tokens = nn.Dense(self.dim, dtype=self.dtype, kernel_init=dense_init, name="patch_embed")(tokens)
        cls_pos, patch_pos = self._positions(grid_h, grid_w)
        cls_token = self.param("cls_token", token_init, (1, 1, self.dim), jnp.float32)
        # The mask token exists in 'token' mode whether or not this call has a mask, so init creates it.
        mask_token = (
            self.param("mask_token", token_init, (1, 1, self.dim), jnp.float32) if self.mask_mode == "token" else None
        )

        out = {}
        if mask is not None and mask.shape != (b, n):
            raise ValueError(f"mask must have shape {(b, n)} (batch, patches), got {mask.shape}")
        if mask is not None and mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = masked), got dtype {mask.dtype}")
        if mask is not None and self.mask_mode == "token":
            tokens = jnp.where(mask[..., None], mask_token.astype(self.dtype), tokens)
        tokens = tokens + patch_pos.astype(self.dtype)
        if mask is not None and self.mask_mode == "drop":
            n_vis = _static_num_visible(mask, num_visible)
            # Stable argsort puts the False (visible) entries first, in their original raster order.
            order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)
            visible_idx = order[:, :n_vis].astype(jnp.int32)
            tokens = jnp.take_along_axis(tokens, visible_idx[..., None], axis=1)
            out["visible_idx"] = visible_idx

        cls = jnp.broadcast_to((cls_token + cls_pos).astype(self.dtype), (b, 1, self.dim))
        tokens = jnp.concatenate([cls, tokens], axis=1)
        tokens = self._blocks(tokens, train)
        tokens = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="norm")(tokens).astype(jnp.float32)
        patch_tokens = tokens[:, 1:]
        out["tokens"] = patch_tokens
        out["cls"] = tokens[:, 0]
        out["pooled"] = tokens[:, 0] if self.pool == "cls" else jnp.mean(patch_tokens, axis=1)
        return out

    def _blocks(self, tokens, train: bool):
        return transformer_blocks(
            tokens,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=_mlp_width(self.dim, self.mlp_ratio, self.mlp_dim),
            dtype=self.dtype,
            train=train,
            rates=drop_path_rates(self.drop_path_rate, self.depth),
            scan=self.scan,
            remat=self.remat,
            remat_policy_name=self.remat_policy,
        )


def transformer_blocks(
    tokens,
    *,
    depth: int,
    num_heads: int,
    mlp_dim: int,
    dtype,
    train: bool,
    rates=None,
    scan: bool = False,
    remat: str = "none",
    remat_policy_name: str = "nothing_saveable",
):
    """``depth`` pre-norm blocks on ``tokens`` [B, N, D], created in the calling module's scope (call it from a
    compact method): the ViT encoder's and MAE's decoder's stack.

    ``rates``: per-block stochastic-depth rates (None: all 0). ``scan`` False: a Python loop of :class:`Block`
    named ``block1 .. block{depth}``; True: one ``nn.scan`` of :class:`ScannedBlock` named ``blocks`` (parameters
    stacked on a leading axis, :func:`stack_blocks`), equal outputs and gradients. ``remat`` 'block': each block is
    rematerialised in the backward pass, keeping what ``jax.checkpoint_policies.<remat_policy_name>`` saves.
    """
    rates = [0.0] * depth if rates is None else list(rates)
    policy = remat_policy(remat_policy_name)
    if scan:
        layer = ScannedBlock
        if remat == "block":
            layer = nn.remat(layer, policy=policy, prevent_cse=False)  # scan already keeps the layers apart
        stack = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=0,
            length=depth,
        )
        active = any(r > 0.0 for r in rates)
        tokens, _ = stack(num_heads, mlp_dim, dtype, active, train, name="blocks")(
            tokens, jnp.asarray(rates, jnp.float32)
        )
        return tokens
    block = Block if remat == "none" else nn.remat(Block, policy=policy, static_argnums=(2,))
    for i, rate in enumerate(rates):
        tokens = block(num_heads, dtype=dtype, drop_path=rate, mlp_dim=mlp_dim, name=f"block{i + 1}")(tokens, train)
    return tokens


# ----- the two parameter layouts: unrolled blocks (block1 .. blockN) and the scan's stacked 'blocks' -----------------
_BLOCK_KEY = re.compile(r"block(\d+)$")
STACKED_KEY = "blocks"


def _block_numbers(tree: dict) -> list[int]:
    return sorted(int(m.group(1)) for m in map(_BLOCK_KEY.match, tree) if m)


def stack_blocks(encoder: dict) -> dict:
    """Unrolled ViT parameters (``block1 .. blockN``) -> the scanned layout (``blocks``, leaves stacked [N, ...]).

    Works on any tree that mirrors the encoder's parameters (optimizer moments, an EMA copy) and on abstract leaves
    (``jax.ShapeDtypeStruct``, whose NamedSharding gains a leading unsharded axis). A tree without blocks is
    returned unchanged.
    """
    numbers = _block_numbers(encoder)
    if not numbers:
        return encoder
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"blocks must be numbered 1 .. N without gaps, got {numbers}")
    out = {k: v for k, v in encoder.items() if not _BLOCK_KEY.match(k)}
    out[STACKED_KEY] = jax.tree.map(_stack_leaves, *[encoder[f"block{i}"] for i in numbers])
    return out


def unstack_blocks(encoder: dict, depth: int | None = None) -> dict:
    """The scanned layout (``blocks`` [N, ...]) -> unrolled ``block1 .. blockN``; the inverse of :func:`stack_blocks`.

    ``depth`` is N; None reads it off the first leaf (a subtree without array leaves, e.g. an optimizer state that
    masks every block out, needs it).
    """
    if STACKED_KEY not in encoder:
        return encoder
    stacked = encoder[STACKED_KEY]
    if depth is None:
        leaves = jax.tree.leaves(stacked)
        if not leaves:
            raise ValueError("unstack_blocks: the stacked blocks hold no array; pass depth=")
        depth = leaves[0].shape[0]
    out = {k: v for k, v in encoder.items() if k != STACKED_KEY}
    for i in range(depth):
        out[f"block{i + 1}"] = jax.tree.map(lambda x, i=i: _take_leaf(x, i), stacked)
    return out


def _stack_leaves(*xs):
    first = xs[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        sharding = first.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))
        return jax.ShapeDtypeStruct((len(xs), *first.shape), first.dtype, sharding=sharding)
    return jnp.stack(xs)


def _take_leaf(x, i: int):
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            spec = tuple(sharding.spec)[1:]
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)
    return x[i]


def _first_layout(tree, key: str = "encoder") -> tuple[bool, int] | None:
    """(scanned?, blocks) of the first ViT block stack found under a ``key`` subtree of ``tree`` (either layout;
    'encoder': the ViT encoder, 'decoder': MAE's decoder), None when there is none."""
    found = []

    def visit(node, under_key=False):
        if found:
            return
        if isinstance(node, dict):
            if under_key and _block_numbers(node):
                found.append((False, max(_block_numbers(node))))
            elif under_key and STACKED_KEY in node and jax.tree.leaves(node[STACKED_KEY]):
                found.append((True, jax.tree.leaves(node[STACKED_KEY])[0].shape[0]))
            for k, v in node.items():
                visit(v, k == key)
            return
        for child in _children(node)[0]:
            visit(child)

    visit(tree)
    return found[0] if found else None


def is_scanned(tree) -> bool | None:
    """Layout of the ViT encoder parameters in ``tree``: True scanned, False unrolled, None when it has none."""
    found = _first_layout(tree)
    return None if found is None else found[0]


def _children(node):
    """Immediate pytree children of ``node`` and its treedef (no children for a leaf)."""
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef):
        return [], treedef
    return children, treedef


LAYOUT_KEYS = ("encoder", "decoder")  # subtrees whose blocks take model.scan's layout (MAE's decoder follows it)


def relayout(tree, scanned: bool, keys: tuple[str, ...] = LAYOUT_KEYS):
    """Every ``'encoder'`` subtree of ``tree`` (a whole train state: params, optimizer moments, EMA targets), and
    every ``'decoder'`` subtree with ViT blocks (MAE's decoder, which takes the encoder's layout), in the scanned
    (``scanned=True``) or the unrolled layout; other subtrees (heads) are left alone. ``keys`` limits it to some of
    those subtrees. Leaves may be arrays or ``jax.ShapeDtypeStruct`` (restoring a checkpoint into another layout)."""
    depths = {}
    for key in keys:
        found = _first_layout(tree, key)
        if found is not None:
            depths[key] = found[1]
    if not depths:
        return tree

    def visit(node, under=None):
        if isinstance(node, dict):
            if under in depths:
                node = stack_blocks(node) if scanned else unstack_blocks(node, depths[under])
            return {k: visit(v, k) for k, v in node.items()}
        children, treedef = _children(node)
        if not children:
            return node
        return treedef.unflatten([visit(c) for c in children])

    return visit(tree)


def decoder_scanned(tree) -> bool | None:
    """Layout of MAE's decoder blocks in ``tree``: True scanned, False unrolled, None when it has none."""
    found = _first_layout(tree, "decoder")
    return None if found is None else found[0]


# A checkpoint of either layout restores into the other; the two one-part converters read the checkpoints of
# versions whose MAE decoder stayed unrolled under model.scan (encoder stacked, decoder unrolled) into either layout.
checkpoint.register_layout(is_scanned, relayout)
checkpoint.register_layout(decoder_scanned, partial(relayout, keys=("decoder",)))
checkpoint.register_layout(is_scanned, partial(relayout, keys=("encoder",)))

ViTTiny = partial(ViT, dim=192, depth=12, num_heads=3)
ViTSmall = partial(ViT, dim=384, depth=12, num_heads=6)
ViTBase = partial(ViT, dim=768, depth=12, num_heads=12)
# ViT-L/16 and ViT-H/14 as in Dosovitskiy et al. 2021 (Table 1) and MAE; H uses 14 px patches.
ViTLarge = partial(ViT, dim=1024, depth=24, num_heads=16)
ViTHuge = partial(ViT, dim=1280, depth=32, num_heads=16, patch_size=14)
# ViT-g/14 of Zhai et al. 2022, "Scaling Vision Transformers" (Table 2): width 1408, depth 40, MLP 6144, 16 heads;
# 1.01 G parameters here (issue 20's DINO ViT-g/14 figure, 19.3 GiB of params + AdamW + teacher + gradients, is
# this net with a DINO head). DINOv2's vit_giant2 is another net (1536 wide, 24 heads, SwiGLU FFN): not this preset.
ViTGiant = partial(ViT, dim=1408, depth=40, num_heads=16, mlp_dim=6144, patch_size=14)
# Test-size net: width 32, 2 blocks, 2 heads, patch 4.
ViTTest = partial(ViT, dim=32, depth=2, num_heads=2, patch_size=4, image_size=32)
