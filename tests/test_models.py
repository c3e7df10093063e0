"""Tests for ssljax.models: encoders (ResNet, ViT), heads, registry.

Large backbones are checked with jax.eval_shape only (no compute); numerical checks use tiny models against direct
NumPy implementations of the same formulas.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from ssljax.models import (BACKBONES, MLP, DINOHead, LinearPredictor, create_encoder, patchify,
                           sincos_pos_embed_2d)


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_init(module, image_size, batch=2):
    x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))


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


@pytest.mark.parametrize("name,kw,out_key,shape", [
    ("resnet_tiny", {"cifar_stem": True}, "feature_map", (3, 8, 8, 16)),
    ("resnet_tiny", {}, "feature_map", (3, 2, 2, 16)),
    ("vit_test", {"image_size": 16}, "tokens", (3, 16, 32)),
])
def test_tiny_backbones_run(name, kw, out_key, shape):
    module, feature_dim = create_encoder(name, **kw)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=False)
    assert out[out_key].shape == shape
    assert out["pooled"].shape == (3, feature_dim)
    assert np.all(np.isfinite(np.asarray(out["pooled"])))
    if name.startswith("resnet"):
        np.testing.assert_allclose(out["pooled"], np.asarray(out["feature_map"]).mean(axis=(1, 2)), rtol=1e-6)


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
        module.init(jax.random.key(0), x, mask=jnp.zeros((1, 4), bool))
    assert set(BACKBONES) == {"resnet18", "resnet34", "resnet50", "resnet_tiny",
                              "vit_tiny", "vit_small", "vit_base", "vit_test"}


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


def test_bf16_compute_float32_params_and_outputs():
    for name, kw, probe in [("resnet_tiny", {}, ("stage1_block1", "conv1")),
                            ("vit_test", {"image_size": 16}, ("block1", "fc1"))]:
        module, _ = create_encoder(name, dtype=jnp.bfloat16, **kw)
        x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
        variables = module.init(jax.random.key(1), x, train=False)
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
        out, inter = module.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        assert all(v.dtype == jnp.float32 for v in out.values())
        act = inter["intermediates"][probe[0]][probe[1]]["__call__"][0]
        assert act.dtype == jnp.bfloat16, name
        # Same parameters in float32: bf16 result is close to it.
        module32, _ = create_encoder(name, **kw)
        out32 = module32.apply(variables, x, train=False)
        np.testing.assert_allclose(out["pooled"], out32["pooled"], atol=0.1, rtol=0.1)


def test_stem_spatial_sizes():
    x = jnp.zeros((1, 32, 32, 3))
    for cifar, stem_hw, final_hw in [(True, 32, 16), (False, 8, 4)]:
        module, _ = create_encoder("resnet_tiny", cifar_stem=cifar)
        variables = module.init(jax.random.key(0), x, train=False)
        out, inter = module.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        kernel = variables["params"]["stem_conv"]["kernel"]
        assert kernel.shape == ((3, 3, 3, 8) if cifar else (7, 7, 3, 8))
        # Input to stage 1 = stem output (after the max-pool for the ImageNet stem).
        stage1 = inter["intermediates"]["stage1_block1"]["conv1"]["__call__"][0]
        assert stage1.shape[1:3] == (stem_hw, stem_hw)
        assert out["feature_map"].shape == (1, final_hw, final_hw, 16)


def test_resnet_init_zero_gamma_and_kaiming_fan_out():
    module, _ = create_encoder("resnet18")
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params = variables["params"]
    for stage in range(1, 5):
        for block in (1, 2):
            blk = params[f"stage{stage}_block{block}"]
            assert np.all(np.asarray(blk["bn2"]["scale"]) == 0)
            assert np.all(np.asarray(blk["bn1"]["scale"]) == 1)
    assert np.all(np.asarray(params["stage2_block1"]["downsample_bn"]["scale"]) == 1)
    k = np.asarray(params["stage4_block1"]["conv2"]["kernel"])  # 3x3x512x512, fan_out = 9 * 512
    np.testing.assert_allclose(k.std(), np.sqrt(2.0 / (9 * 512)), rtol=0.02)
    assert abs(k.mean()) < 1e-4


def test_batchnorm_train_vs_eval():
    module, _ = create_encoder("resnet_tiny", cifar_stem=True)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) * 2 + 1
    variables = module.init(jax.random.key(1), x, train=False)
    stats0 = variables["batch_stats"]
    # Eval: running statistics; each sample's output does not depend on the rest of the batch.
    eval_all = module.apply(variables, x, train=False)["pooled"]
    eval_one = module.apply(variables, x[:1], train=False)["pooled"]
    np.testing.assert_allclose(eval_all[:1], eval_one, rtol=1e-5, atol=1e-6)
    _, upd = module.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, upd["batch_stats"], stats0)
    # Train: batch statistics, so a sample's output depends on the batch; running stats move by momentum 0.9.
    (out, inter), upd = (lambda r: ((r[0], r[1]["intermediates"]), r[1]))(module.apply(
        variables, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True))
    train_one, _ = module.apply(variables, x[:2], train=True, mutable=["batch_stats"])
    assert not np.allclose(out["pooled"][:1], train_one["pooled"][:1], atol=1e-4)
    conv = np.asarray(inter["stem_conv"]["__call__"][0]).reshape(-1, 8)
    new = upd["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], 0.9 * 0 + 0.1 * conv.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 * 1 + 0.1 * conv.var(0), rtol=1e-4)
    # Train-mode normalised stem output: zero batch mean, unit batch variance (scale 1, bias 0 at init).
    bn_out = np.asarray(inter["stem_bn"]["__call__"][0]).reshape(-1, 8)
    np.testing.assert_allclose(bn_out.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(bn_out.var(0), conv.var(0) / (conv.var(0) + 1e-5), rtol=1e-4)


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


def make_vit(**kw):
    module, _ = create_encoder("vit_test", image_size=16, **kw)  # dim 32, 2 blocks, 2 heads, patch 4 -> 16 patches
    x = jax.random.normal(jax.random.key(3), (3, 16, 16, 3))
    variables = module.init(jax.random.key(4), x)
    return module, variables, x


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


def test_vit_matches_numpy_reference_and_pooling():
    module, variables, x = make_vit()
    params = jax.device_get(variables["params"])
    out = module.apply(variables, x)
    ref = np_vit_blocks(np_embed(x, params, 4, 32), params, 2, 2)
    np.testing.assert_allclose(out["tokens"], ref[:, 1:], atol=2e-4)
    np.testing.assert_allclose(out["pooled"], ref[:, 0], atol=2e-4)
    assert "visible_idx" not in out
    mean_module, _ = create_encoder("vit_test", image_size=16, pool="mean")
    out_mean = mean_module.apply(variables, x)
    np.testing.assert_allclose(out_mean["pooled"], ref[:, 1:].mean(1), atol=2e-4)


def test_vit_mask_drop_keeps_visible_patches():
    module, variables, x = make_vit()
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


def test_vit_mask_token_mode():
    module, variables, x = make_vit(mask_mode="token")
    params = jax.device_get(variables["params"])
    assert params["mask_token"].shape == (1, 1, 32)
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


def test_vit_learned_positions_and_resize():
    module, variables, x = make_vit(pos_embed="learned")
    assert variables["params"]["pos_embed"].shape == (1, 1 + 16, 32)
    out = module.apply(variables, jnp.zeros((2, 8, 8, 3)))  # 2x2 grid: table bilinearly resized
    assert out["tokens"].shape == (2, 4, 32)
    # A constant table stays constant under resizing, so a constant image gives identical tokens per patch.
    table = jnp.concatenate([jnp.zeros((1, 1, 32)), jnp.ones((1, 16, 32))], axis=1)
    variables = {"params": {**variables["params"], "pos_embed": table}}
    tok = module.apply(variables, jnp.zeros((1, 8, 8, 3)))["tokens"]
    np.testing.assert_allclose(tok[0], np.broadcast_to(tok[0, :1], tok[0].shape), atol=1e-3)


# ------------------------------------------------------------------------------------------------------- heads


def np_bn_train(x, p=None, eps=1e-5):
    y = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    return y if p is None else y * np.asarray(p["scale"]) + np.asarray(p["bias"])


def test_mlp_matches_numpy_and_bn_placement():
    x = jax.random.normal(jax.random.key(0), (8, 6))
    head = MLP(hidden_dims=(10, 12), out_dim=5, last_bn=True, last_bn_affine=False)
    variables = head.init(jax.random.key(1), x)
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
    v2 = plain.init(jax.random.key(2), x)
    assert "batch_stats" not in v2 and "bias" not in v2["params"]["linear_0"]
    p2 = jax.device_get(v2["params"])
    ref2 = np.maximum(np.asarray(x) @ p2["linear_0"]["kernel"], 0) @ p2["linear_out"]["kernel"]
    np.testing.assert_allclose(plain.apply(v2, x), ref2, atol=1e-5)
    # Eval mode uses running statistics (init: mean 0, var 1): BN is x / sqrt(1 + eps).
    ev = head.apply(variables, x, train=False)
    h = np.asarray(x, np.float64)
    for i in range(2):
        h = np.maximum(np_dense(h, p[f"linear_{i}"]) / np.sqrt(1 + 1e-5), 0)
    np.testing.assert_allclose(ev, np_dense(h, p["linear_out"]) / np.sqrt(1 + 1e-5), atol=1e-4)


def test_linear_predictor_is_x_at_kernel():
    pred = LinearPredictor(dim=4)
    x = jax.random.normal(jax.random.key(0), (3, 4))
    variables = pred.init(jax.random.key(1), x)
    np.testing.assert_array_equal(variables["params"]["kernel"], np.eye(4))
    np.testing.assert_allclose(pred.apply(variables, x), x, atol=1e-6)
    kernel = np.arange(16, dtype=np.float32).reshape(4, 4) / 10  # not symmetric: checks the orientation
    out = pred.apply({"params": {"kernel": jnp.asarray(kernel)}}, x)
    np.testing.assert_allclose(out, np.asarray(x) @ kernel, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, np.asarray(x) @ kernel.T, atol=1e-3)
    biased = LinearPredictor(dim=4, use_bias=True)
    assert set(biased.init(jax.random.key(1), x)["params"]) == {"kernel", "bias"}
    with pytest.raises(ValueError, match="last dimension 3"):
        pred.apply(variables, x[:, :3])


def test_dino_head_normalised_last_layer():
    x = jax.random.normal(jax.random.key(0), (5, 12))
    head = DINOHead(out_dim=7, hidden_dim=16, bottleneck_dim=8)
    variables = head.init(jax.random.key(1), x)
    p = jax.device_get(variables["params"])
    assert set(p["last_layer"]) == {"kernel"}  # no bias, no learnable g
    out = head.apply(variables, x)
    gelu = lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2)))
    h = gelu(np_dense(gelu(np_dense(np.asarray(x, np.float64), p["linear_0"])), p["linear_1"]))
    z = np_dense(h, p["linear_bottleneck"])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    v = np.asarray(p["last_layer"]["kernel"], np.float64)
    ref = z @ (v / np.linalg.norm(v, axis=0, keepdims=True))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.all(np.abs(np.asarray(out)) <= 1 + 1e-6)
    # Rescaling a column of V does not change the output (the weight is normalised per output unit).
    scaled = jax.tree_util.tree_map(lambda a: a, variables)
    scaled["params"]["last_layer"]["kernel"] = variables["params"]["last_layer"]["kernel"] * jnp.arange(1.0, 8.0)
    np.testing.assert_allclose(head.apply(scaled, x), out, atol=1e-5)
    learn_g = DINOHead(out_dim=7, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    vg = learn_g.init(jax.random.key(1), x)
    np.testing.assert_array_equal(vg["params"]["last_layer"]["g"], np.ones(7))
