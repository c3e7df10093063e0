"""Tests for ssljax.models: encoders (ResNet, ViT), heads, registry.

Large backbones are checked with jax.eval_shape only (no compute); numerical checks use tiny models against direct
NumPy implementations of the same formulas.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from ssljax.models import BACKBONES, MLP, DINOHead, LinearPredictor, create_encoder, patchify, sincos_pos_embed_2d
from ssljax.models.resnet import BasicBlock, Bottleneck


def normal(seed, shape):
    """Standard normal float32 inputs drawn in NumPy (jax.random's threefry compiles for a second per shape on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_init(module, image_size, batch=2):
    x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))


def intermediates_shape(module, variables, x, **kw):
    """Abstract forward with captured intermediates: (out, intermediates) shapes, no compute."""
    out, state = jax.eval_shape(lambda v, x: module.apply(v, x, capture_intermediates=True,
                                                           mutable=["intermediates"], **kw), variables, x)
    return out, state["intermediates"]


def random_variables(module, x, seed=0, **kw):
    """Variables with the structure of ``module.init`` but random values drawn in NumPy.

    Real ``init`` compiles a random initialiser per parameter shape, which costs seconds on CPU; the numerical tests
    do not need the initial values (those are tested on single blocks), and random BN scales / biases / tokens make
    them stricter. Kernels ~ N(0, 1/fan_in), 'scale' ~ 1 + N(0, 0.1^2), other vectors / tokens ~ N(0, 0.25),
    BN running stats: mean 0, var 1 (as after init).
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), x, **kw))

    def fill(path, leaf):
        name = path[-1].key
        if name == "mean":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "var":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
        if name == "scale":
            return jnp.asarray(1 + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)
        return jnp.asarray(0.5 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def tiny_resnet():
    module, _ = create_encoder("resnet_tiny", cifar_stem=True)
    x = normal(0, (4, 16, 16, 3)) * 2 + 1
    return module, random_variables(module, x, train=False), x


@pytest.fixture(scope="module")
def tiny_vit():
    """vit_test on 16 px (16 patches of 4 px), with variables of the 'token' mode and a learned table so that one set
    serves every variant: modules that do not use 'mask_token' / 'pos_embed' ignore them."""
    module, _ = create_encoder("vit_test", image_size=16, mask_mode="token", pos_embed="learned")
    x = normal(3, (3, 16, 16, 3))
    return x, random_variables(module, x, seed=1)


# ----------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name,dim,size,kw,spatial", [
    ("resnet18", 512, 64, {}, 2),
    ("resnet34", 512, 64, {}, 2),
    ("resnet50", 2048, 64, {}, 2),
    ("resnet18", 512, 32, {"cifar_stem": True}, 4),
    ("vit_tiny", 192, 32, {"image_size": 32}, 2),
    ("vit_small", 384, 32, {"image_size": 32}, 2),
    ("vit_base", 768, 32, {"image_size": 32}, 2),
    ("vit_small", 384, 224, {"image_size": 224}, 14),
])
def test_large_backbones_shapes_abstract(name, dim, size, kw, spatial):
    module, feature_dim = create_encoder(name, **kw)
    assert feature_dim == dim
    variables = abstract_init(module, size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    assert out["pooled"].shape == (2, dim) and out["pooled"].dtype == jnp.float32
    if name.startswith("resnet"):
        assert out["feature_map"].shape == (2, spatial, spatial, dim)
        assert out["feature_map"].dtype == jnp.float32
    else:
        assert out["tokens"].shape == (2, spatial * spatial, dim)
        assert out["tokens"].dtype == jnp.float32


def test_tiny_resnet_runs(tiny_resnet):
    module, variables, x = tiny_resnet
    out = jax.jit(module.apply, static_argnames="train")(variables, x, train=False)
    assert out["feature_map"].shape == (4, 8, 8, 16) and out["pooled"].shape == (4, 16)
    np.testing.assert_allclose(out["pooled"], np.asarray(out["feature_map"]).mean(axis=(1, 2)), rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(out["pooled"])))


def test_tiny_vit_runs(tiny_vit):
    x, variables = tiny_vit
    module, feature_dim = create_encoder("vit_test", image_size=16)
    assert feature_dim == 32
    out = module.apply(variables, x, train=False)
    assert out["tokens"].shape == (3, 16, 32) and out["pooled"].shape == (3, 32)
    assert np.all(np.isfinite(np.asarray(out["pooled"])))


def test_unknown_backbone_and_bad_options():
    with pytest.raises(ValueError, match=r"'resnet19'.*resnet18.*vit_test"):
        create_encoder("resnet19")
    with pytest.raises(ValueError, match="image_size is required"):
        create_encoder("vit_small")
    with pytest.raises(ValueError, match="not divisible"):
        create_encoder("vit_small", image_size=100)
    module, _ = create_encoder("resnet_tiny")
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="mask"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), x, mask=jnp.zeros((1, 4), bool)))
    assert set(BACKBONES) == {"resnet18", "resnet34", "resnet50", "resnet_tiny", "resnet_mini",
                              "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant", "vit_test"}


# ----------------------------------------------------------------------------------------------- param counts


def test_resnet_param_counts_match_torchvision():
    # torchvision resnet18 / resnet34 / resnet50 totals minus the 1000-class fc (512*1000+1000, 2048*1000+1000).
    expected = {"resnet18": 11_689_512 - 513_000, "resnet34": 21_797_672 - 513_000,
                "resnet50": 25_557_032 - 2_049_000}
    assert expected["resnet18"] == 11_176_512 and expected["resnet50"] == 23_508_032
    for name, count in expected.items():
        module, _ = create_encoder(name)
        assert n_params(abstract_init(module, 64)["params"]) == count, name
    # CIFAR stem: 3x3x3x64 instead of 7x7x3x64 stem kernel.
    module, _ = create_encoder("resnet18", cifar_stem=True)
    assert n_params(abstract_init(module, 32)["params"]) == 11_176_512 - (7 * 7 - 3 * 3) * 3 * 64


def test_vit_small_param_count():
    d, depth, p, n = 384, 12, 16, (224 // 16) ** 2
    per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    without_pos = (p * p * 3 * d + d) + d + depth * per_block + 2 * d  # patch embed, cls, blocks, final norm
    assert without_pos == 21_590_016
    module, _ = create_encoder("vit_small", image_size=224)  # fixed sin-cos positions: not parameters
    assert n_params(abstract_init(module, 224)["params"]) == 21_590_016
    module, _ = create_encoder("vit_small", image_size=224, pos_embed="learned")
    # = timm vit_small_patch16_224 (22,050,664) minus its 384*1000+1000 classifier.
    assert n_params(abstract_init(module, 224)["params"]) == without_pos + (1 + n) * d == 22_050_664 - 385_000


# ------------------------------------------------------------------------------------------------------ ResNet


def test_bf16_compute_float32_params_and_outputs(tiny_resnet, tiny_vit):
    vx, vvars = tiny_vit
    cases = [("resnet_tiny", {"cifar_stem": True}, tiny_resnet[1], tiny_resnet[2], ("stage1_block1", "conv1")),
             ("vit_test", {"image_size": 16}, vvars, vx, ("block1", "fc1"))]
    for name, kw, variables, x, probe in cases:
        module, _ = create_encoder(name, dtype=jnp.bfloat16, **kw)
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(1), x, train=False))
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(abstract)), name
        out, inter = jax.jit(lambda v, x: module.apply(v, x, train=False, capture_intermediates=True,
                                                       mutable=["intermediates"]))(variables, x)
        assert all(v.dtype == jnp.float32 for v in out.values())
        act = inter["intermediates"][probe[0]][probe[1]]["__call__"][0]
        assert act.dtype == jnp.bfloat16, name
        # Same parameters in float32: the bf16 result is close to it.
        module32, _ = create_encoder(name, **kw)
        out32 = jax.jit(lambda v, x: module32.apply(v, x, train=False))(variables, x)
        np.testing.assert_allclose(out["pooled"], out32["pooled"], atol=0.1, rtol=0.1)


def test_stem_spatial_sizes():
    x = jnp.zeros((1, 32, 32, 3))
    for cifar, stem_hw, final_hw in [(True, 32, 16), (False, 8, 4)]:
        module, _ = create_encoder("resnet_tiny", cifar_stem=cifar)
        variables = abstract_init(module, 32, batch=1)
        out, inter = intermediates_shape(module, variables, x, train=False)
        kernel = variables["params"]["stem_conv"]["kernel"]
        assert kernel.shape == ((3, 3, 3, 8) if cifar else (7, 7, 3, 8))
        assert inter["stem_conv"]["__call__"][0].shape[1:3] == ((32, 32) if cifar else (16, 16))
        # Input to stage 1 = stem output (after the max-pool for the ImageNet stem).
        assert inter["stage1_block1"]["conv1"]["__call__"][0].shape[1:3] == (stem_hw, stem_hw)
        assert out["feature_map"].shape == (1, final_hw, final_hw, 16)


def test_resnet_init_zero_gamma_and_kaiming_fan_out():
    # BasicBlock: the second BN starts at scale 0, so the block starts as relu(identity).
    bp = jax.jit(BasicBlock(width=16).init)(jax.random.key(0), jnp.ones((1, 4, 4, 16)))["params"]
    assert np.all(np.asarray(bp["bn2"]["scale"]) == 0) and np.all(np.asarray(bp["bn1"]["scale"]) == 1)
    k = np.asarray(bp["conv2"]["kernel"])  # 3x3x16x16, fan_out = 9 * 16
    np.testing.assert_allclose(k.std(), np.sqrt(2.0 / (9 * 16)), rtol=0.08)
    assert abs(k.mean()) < 0.02
    # Bottleneck: the third BN is the zero-initialised one; the shortcut BN is not; the stride is on the 3x3 (v1.5).
    block = Bottleneck(width=2, stride=2)
    variables = jax.jit(block.init)(jax.random.key(0), jnp.ones((1, 4, 4, 4)))
    bp = variables["params"]
    assert np.all(np.asarray(bp["bn3"]["scale"]) == 0) and bp["bn3"]["scale"].shape == (8,)
    assert np.all(np.asarray(bp["bn2"]["scale"]) == 1) and np.all(np.asarray(bp["downsample_bn"]["scale"]) == 1)
    _, inter = intermediates_shape(block, variables, jnp.ones((1, 4, 4, 4)), train=False)
    assert inter["conv1"]["__call__"][0].shape == (1, 4, 4, 2)
    assert inter["conv2"]["__call__"][0].shape == (1, 2, 2, 2)


def test_batchnorm_train_vs_eval(tiny_resnet):
    module, variables, x = tiny_resnet
    apply = jax.jit(module.apply, static_argnames=("train", "mutable", "capture_intermediates"))  # not op by op
    stats0 = variables["batch_stats"]
    # Eval: running statistics; each sample's output does not depend on the rest of the batch.
    eval_all = apply(variables, x, train=False)["pooled"]
    eval_one = apply(variables, x[:1], train=False)["pooled"]
    np.testing.assert_allclose(eval_all[:1], eval_one, rtol=1e-5, atol=1e-6)
    _, upd = apply(variables, x, train=False, mutable=("batch_stats",))
    jax.tree_util.tree_map(np.testing.assert_array_equal, upd["batch_stats"], stats0)
    # Train: batch statistics, so a sample's output depends on the batch; running stats move with momentum 0.9.
    out, state = apply(variables, x, train=True, mutable=("batch_stats", "intermediates"), capture_intermediates=True)
    inter = state["intermediates"]
    train_two, _ = apply(variables, x[:2], train=True, mutable=("batch_stats",))
    assert not np.allclose(out["pooled"][:1], train_two["pooled"][:1], atol=1e-4)
    conv = np.asarray(inter["stem_conv"]["__call__"][0], np.float64).reshape(-1, 8)
    new = state["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], 0.9 * 0 + 0.1 * conv.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 * 1 + 0.1 * conv.var(0), rtol=1e-4)
    # Train-mode stem BN output: (conv - batch mean) / sqrt(batch var + eps) * scale + bias.
    bn_out = np.asarray(inter["stem_bn"]["__call__"][0], np.float64).reshape(-1, 8)
    bn = variables["params"]["stem_bn"]
    ref = (conv - conv.mean(0)) / np.sqrt(conv.var(0) + 1e-5) * np.asarray(bn["scale"]) + np.asarray(bn["bias"])
    np.testing.assert_allclose(bn_out, ref, atol=1e-4)
    # Every BN layer's statistics changed.
    for path, a in jax.tree_util.tree_leaves_with_path(state["batch_stats"]):
        b = stats0
        for k in path:
            b = b[k.key]
        assert not np.allclose(a, b), path


# --------------------------------------------------------------------------------------------------------- ViT


def np_layernorm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def np_dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def np_vit_blocks(tokens, params, depth, heads):
    """Reference pre-norm transformer on [B, T, D] tokens, then the final LayerNorm."""
    b, t, d = tokens.shape
    hd = d // heads
    x = tokens.astype(np.float64)
    for i in range(depth):
        p = params[f"block{i + 1}"]
        y = np_layernorm(x, p["norm1"])
        qkv = np_dense(y, p["attn"]["qkv"]).reshape(b, t, 3, heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)
        x = x + np_dense(att, p["attn"]["proj"])
        y = np_dense(np_layernorm(x, p["norm2"]), p["fc1"])
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = x + np_dense(y, p["fc2"])
    return np_layernorm(x, params["norm"])


def np_embed(images, params, patch, dim, mask=None, mask_mode="drop"):
    """Reference embedding: patches -> Linear -> (mask token) -> + sin-cos positions -> (drop) -> prepend [CLS]."""
    x = np.asarray(images, np.float64)
    b, h, w, c = x.shape
    gh, gw = h // patch, w // patch
    patches = x.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
    tok = np_dense(patches, params["patch_embed"])
    if mask is not None and mask_mode == "token":
        tok = np.where(mask[..., None], np.asarray(params["mask_token"])[0], tok)
    tok = tok + sincos_pos_embed_2d(dim, gh, gw)[None]
    if mask is not None and mask_mode == "drop":
        tok = np.stack([tok[i][~mask[i]] for i in range(b)])
    cls = np.broadcast_to(np.asarray(params["cls_token"]), (b, 1, dim))
    return np.concatenate([cls, tok], axis=1)


def vit_module(**kw):
    return create_encoder("vit_test", image_size=16, **kw)[0]  # dim 32, 2 blocks, 2 heads, patch 4 -> 16 patches


def test_sincos_table_formula():
    d, gh, gw = 16, 3, 5
    t = sincos_pos_embed_2d(d, gh, gw)
    assert t.shape == (gh * gw, d)
    omega = 1.0 / 10000 ** (np.arange(4) / 4.0)
    for r, col in [(0, 0), (2, 4), (1, 3)]:
        row = t[r * gw + col]
        np.testing.assert_allclose(row[0:4], np.sin(col * omega), atol=1e-6)
        np.testing.assert_allclose(row[4:8], np.cos(col * omega), atol=1e-6)
        np.testing.assert_allclose(row[8:12], np.sin(r * omega), atol=1e-6)
        np.testing.assert_allclose(row[12:16], np.cos(r * omega), atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(10, 2, 2)


def test_patchify_order():
    img = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    p = np.asarray(patchify(jnp.asarray(img), 2))
    assert p.shape == (2, 6, 12)
    np.testing.assert_array_equal(p[1, 4], img[1, 2:4, 2:4].reshape(-1))  # patch row 1, col 1 -> index 1*3+1


def test_vit_matches_numpy_reference_and_pooling(tiny_vit):
    x, variables = tiny_vit
    module = vit_module()
    params = jax.device_get(variables["params"])
    out = module.apply(variables, x)
    ref = np_vit_blocks(np_embed(x, params, 4, 32), params, 2, 2)
    np.testing.assert_allclose(out["tokens"], ref[:, 1:], atol=2e-4)
    np.testing.assert_allclose(out["pooled"], ref[:, 0], atol=2e-4)
    assert "visible_idx" not in out
    mean_module, _ = create_encoder("vit_test", image_size=16, pool="mean")
    out_mean = mean_module.apply(variables, x)
    np.testing.assert_allclose(out_mean["pooled"], ref[:, 1:].mean(1), atol=2e-4)


def test_vit_mask_drop_keeps_visible_patches(tiny_vit):
    x, variables = tiny_vit
    module = vit_module()
    params = jax.device_get(variables["params"])
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 16), bool)
    for i in range(3):
        mask[i, rng.choice(16, 12, replace=False)] = True  # 75% masked, 4 visible each
    out = module.apply(variables, x, mask=jnp.asarray(mask))
    visible = np.stack([np.nonzero(~m)[0] for m in mask])
    np.testing.assert_array_equal(out["visible_idx"], visible)
    assert out["tokens"].shape == (3, 4, 32)
    ref = np_vit_blocks(np_embed(x, params, 4, 32, mask=mask), params, 2, 2)
    np.testing.assert_allclose(out["tokens"], ref[:, 1:], atol=2e-4)
    np.testing.assert_allclose(out["pooled"], ref[:, 0], atol=2e-4)
    # Under jit the mask is abstract: num_visible is required and gives the same result.
    jitted = jax.jit(lambda v, x, m: module.apply(v, x, mask=m, num_visible=4))
    np.testing.assert_allclose(jitted(variables, x, jnp.asarray(mask))["tokens"], out["tokens"], atol=1e-5)
    with pytest.raises(ValueError, match="num_visible"):
        jax.jit(lambda v, x, m: module.apply(v, x, mask=m))(variables, x, jnp.asarray(mask))
    uneven = mask.copy()
    uneven[0, visible[0, 0]] = True
    with pytest.raises(ValueError, match="same number of visible"):
        module.apply(variables, x, mask=jnp.asarray(uneven))
    with pytest.raises(ValueError, match="mask must have shape"):
        module.apply(variables, x, mask=jnp.asarray(mask[:, :8]))
    with pytest.raises(ValueError, match="boolean"):
        module.apply(variables, x, mask=jnp.asarray(mask, jnp.int32))
    # Any mutable collection works as for the ResNet (the ViT has no batch_stats, so nothing comes back).
    out2, state = module.apply(variables, x, train=True, mask=jnp.asarray(mask), mutable=["batch_stats"])
    assert state == {} and out2["tokens"].shape == (3, 4, 32)


def test_vit_mask_token_mode(tiny_vit):
    x, variables = tiny_vit
    module = vit_module(mask_mode="token")
    x16 = jnp.zeros((1, 16, 16, 3))
    assert jax.eval_shape(lambda: module.init(jax.random.key(0), x16))["params"]["mask_token"].shape == (1, 1, 32)
    assert "mask_token" not in jax.eval_shape(lambda: vit_module().init(jax.random.key(0), x16))["params"]
    # Give the mask token a distinctive value so the replacement matters.
    variables = {"params": {**variables["params"], "mask_token": jnp.full((1, 1, 32), 0.5)}}
    params = jax.device_get(variables["params"])
    mask = np.zeros((3, 16), bool)
    mask[0, :5] = True
    mask[2, 7:] = True
    out = module.apply(variables, x, mask=jnp.asarray(mask))
    assert out["tokens"].shape == (3, 16, 32) and "visible_idx" not in out
    ref = np_vit_blocks(np_embed(x, params, 4, 32, mask=mask, mask_mode="token"), params, 2, 2)
    np.testing.assert_allclose(out["tokens"], ref[:, 1:], atol=2e-4)
    plain = module.apply(variables, x)
    np.testing.assert_allclose(out["tokens"][1], plain["tokens"][1], atol=1e-6)  # sample 1 has no masked patch
    assert not np.allclose(out["tokens"][0], plain["tokens"][0], atol=1e-3)


def test_vit_learned_positions_and_resize(tiny_vit):
    x, variables = tiny_vit
    module = vit_module(pos_embed="learned")
    assert variables["params"]["pos_embed"].shape == (1, 1 + 16, 32)
    # At the native grid the table is used as is: [CLS] gets row 0, patch i gets row 1 + i.
    params = jax.device_get(variables["params"])
    table = np.asarray(params["pos_embed"], np.float64)
    xf = np.asarray(x, np.float64)
    patches = xf.reshape(3, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, 16, -1)
    emb = np.concatenate([np.broadcast_to(params["cls_token"] + table[:, :1], (3, 1, 32)),
                          np_dense(patches, params["patch_embed"]) + table[:, 1:]], axis=1)
    ref = np_vit_blocks(emb, params, 2, 2)
    forward = jax.jit(module.apply)
    np.testing.assert_allclose(forward(variables, x)["tokens"], ref[:, 1:], atol=2e-4)
    out = forward(variables, jnp.zeros((1, 8, 8, 3)))  # 2x2 grid: table bilinearly resized
    assert out["tokens"].shape == (1, 4, 32)
    # A constant table stays constant under resizing, so a constant image gives identical tokens per patch.
    table = jnp.concatenate([jnp.zeros((1, 1, 32)), jnp.ones((1, 16, 32))], axis=1)
    variables = {"params": {**variables["params"], "pos_embed": table}}
    tok = forward(variables, jnp.zeros((1, 8, 8, 3)))["tokens"]
    np.testing.assert_allclose(tok[0], np.broadcast_to(tok[0, :1], tok[0].shape), atol=1e-3)


# ------------------------------------------------------------------------------------------------------- heads


def np_bn_train(x, p=None, eps=1e-5):
    y = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    return y if p is None else y * np.asarray(p["scale"]) + np.asarray(p["bias"])


def test_mlp_matches_numpy_and_bn_placement():
    x = normal(0, (8, 6))
    head = MLP(hidden_dims=(10, 12), out_dim=5, last_bn=True, last_bn_affine=False)
    variables = random_variables(head, x)
    p = jax.device_get(variables["params"])
    assert set(p) == {"linear_0", "bn_0", "linear_1", "bn_1", "linear_out"}  # no affine params on bn_out
    assert set(variables["batch_stats"]) == {"bn_0", "bn_1", "bn_out"}
    out, upd = head.apply(variables, x, train=True, mutable=["batch_stats"])
    h = np.asarray(x, np.float64)
    for i in range(2):
        h = np.maximum(np_bn_train(np_dense(h, p[f"linear_{i}"]), p[f"bn_{i}"]), 0)
    ref = np_bn_train(np_dense(h, p["linear_out"]))
    assert out.shape == (8, 5) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # Without BN: plain Linear-ReLU-Linear, no batch_stats.
    plain = MLP(hidden_dims=(10,), out_dim=5, use_bn=False, use_bias=False)
    v2 = random_variables(plain, x, seed=2)
    assert "batch_stats" not in v2 and "bias" not in v2["params"]["linear_0"]
    p2 = jax.device_get(v2["params"])
    ref2 = np.maximum(np.asarray(x) @ p2["linear_0"]["kernel"], 0) @ p2["linear_out"]["kernel"]
    np.testing.assert_allclose(plain.apply(v2, x), ref2, atol=1e-5)
    # Eval mode uses the running statistics (mean 0, var 1 here): BN is x / sqrt(1 + eps) * scale + bias.
    ev = head.apply(variables, x, train=False)
    h = np.asarray(x, np.float64)
    for i in range(2):
        bn = p[f"bn_{i}"]
        h = np.maximum(np_dense(h, p[f"linear_{i}"]) / np.sqrt(1 + 1e-5) * bn["scale"] + bn["bias"], 0)
    np.testing.assert_allclose(ev, np_dense(h, p["linear_out"]) / np.sqrt(1 + 1e-5), atol=1e-4)
    # Running statistics after a train step: 0.9 * old + 0.1 * batch statistic of the BN input.
    pre = np_dense(np.asarray(x, np.float64), p["linear_0"])
    np.testing.assert_allclose(upd["batch_stats"]["bn_0"]["mean"], 0.1 * pre.mean(0), atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["bn_0"]["var"], 0.9 + 0.1 * pre.var(0), rtol=1e-4)


def test_linear_predictor_is_x_at_kernel():
    pred = LinearPredictor(dim=4)
    x = normal(0, (3, 4))
    variables = pred.init(jax.random.key(1), x)
    np.testing.assert_array_equal(variables["params"]["kernel"], np.eye(4))
    np.testing.assert_allclose(pred.apply(variables, x), x, atol=1e-6)
    kernel = np.arange(16, dtype=np.float32).reshape(4, 4) / 10  # not symmetric: checks the orientation
    out = pred.apply({"params": {"kernel": jnp.asarray(kernel)}}, x)
    np.testing.assert_allclose(out, np.asarray(x) @ kernel, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, np.asarray(x) @ kernel.T, atol=1e-3)
    biased = LinearPredictor(dim=4, use_bias=True)
    assert set(jax.eval_shape(lambda: biased.init(jax.random.key(1), x))["params"]) == {"kernel", "bias"}
    with pytest.raises(ValueError, match="last dimension 3"):
        pred.apply(variables, x[:, :3])


def test_dino_head_normalised_last_layer():
    x = normal(0, (5, 12))
    head = DINOHead(out_dim=7, hidden_dim=16, bottleneck_dim=8)
    variables = random_variables(head, x)
    p = jax.device_get(variables["params"])
    assert set(p["last_layer"]) == {"kernel"}  # no bias, no learnable g
    out = head.apply(variables, x)
    def gelu(z):
        return 0.5 * z * (1 + erf(z / np.sqrt(2)))

    h = gelu(np_dense(gelu(np_dense(np.asarray(x, np.float64), p["linear_0"])), p["linear_1"]))
    z = np_dense(h, p["linear_bottleneck"])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    v = np.asarray(p["last_layer"]["kernel"], np.float64)
    ref = z @ (v / np.linalg.norm(v, axis=0, keepdims=True))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.all(np.abs(np.asarray(out)) <= 1 + 1e-6)
    # Rescaling a column of V does not change the output (the weight is normalised per output unit).
    kernel = variables["params"]["last_layer"]["kernel"] * jnp.arange(1.0, 8.0)
    scaled = {"params": {**variables["params"], "last_layer": {"kernel": kernel}}}
    np.testing.assert_allclose(head.apply(scaled, x), out, atol=1e-5)
    learn_g = DINOHead(out_dim=7, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    assert jax.eval_shape(lambda: learn_g.init(jax.random.key(1), x))["params"]["last_layer"]["g"].shape == (7,)
    g = np.linspace(0.5, 2.0, 7)
    vg = {"params": {**variables["params"], "last_layer": {**variables["params"]["last_layer"], "g": jnp.asarray(g)}}}
    np.testing.assert_allclose(learn_g.apply(vg, x), ref * g, atol=1e-5)
