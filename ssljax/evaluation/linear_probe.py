"""Linear probes on frozen features: an offline probe on precomputed features and an online probe for the train step.

Offline protocol (MoCo / MAE style): features are standardised with train statistics, a linear classifier
logits = x W + b is trained with SGD + momentum under a cosine learning-rate schedule on the cross-entropy loss,
and top-1 accuracy is reported on the test features. The whole training run is one jit-compiled function.

Online protocol (SimCLR / solo-learn): a linear classifier trained during pretraining on stop-gradient encoder
features, so its gradient never reaches the encoder; here only its parameters and loss are defined, the train loop
owns the optimizer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

_NORMALIZE_CHOICES = ("standardize", "bn_no_affine", None)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example -log softmax(logits)[label], float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _accuracy(params, x, y):
    logits = x @ params["kernel"] + params["bias"]
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "steps_per_epoch"))
def _train_probe_jit(x, y, key, *, num_classes, epochs, batch_size, steps_per_epoch, lr, momentum, weight_decay):
    n, d = x.shape
    init_key, shuffle_key = jax.random.split(key)
    params = {
        # Small random kernel as in MoCo's / MAE's probe (normal, std 0.01); bias zeros.
        "kernel": 0.01 * jax.random.normal(init_key, (d, num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    schedule = optax.cosine_decay_schedule(lr, decay_steps=epochs * steps_per_epoch)
    tx = optax.chain(
        # L2 term added to the gradient before momentum, as torch SGD's weight_decay; the bias is not decayed.
        optax.add_decayed_weights(weight_decay, mask={"kernel": True, "bias": False}),
        optax.sgd(schedule, momentum=momentum),
    )
    opt_state = tx.init(params)

    def loss_fn(p, xb, yb):
        return jnp.mean(_cross_entropy(xb @ p["kernel"] + p["bias"], yb))

    def step(carry, idx):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    def epoch(carry, epoch_key):
        # Each epoch sees a fresh permutation; the n mod batch_size left-over examples differ between epochs.
        perm = jax.random.permutation(epoch_key, n)[: steps_per_epoch * batch_size]
        carry, losses = jax.lax.scan(step, carry, perm.reshape(steps_per_epoch, batch_size))
        return carry, jnp.mean(losses)

    (params, _), epoch_losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(shuffle_key, epochs))
    return params, epoch_losses


def _check_split(name, features, labels, num_classes):
    if features.ndim != 2:
        raise ValueError(f"train_linear_probe: {name}_features must be [N, D], got shape {features.shape}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"train_linear_probe: {name}_labels shape {labels.shape} does not match {features.shape[0]} {name} features"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"train_linear_probe: {name}_labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )


def train_linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    normalize: str | None = "standardize",
) -> dict:
    """Train a linear classifier on frozen features and report its accuracy.

    Normalisation (statistics from the train split only; mu, var per dimension):
      'standardize':  x -> (x - mu) / sqrt(var + 1e-6)
      'bn_no_affine': the same map; it is what BatchNorm(affine=False, eps=1e-6) in front of the head computes at
                      evaluation time (MAE's linear-probe protocol), and on fixed features its running statistics
                      are the train statistics, so the two names are the same transformation.
      None:           features used as given.
    Training: logits = x W + b, loss = mean cross-entropy, SGD with momentum, learning rate
    lr * batch_size / 256 decayed with a cosine over all steps, weight decay (L2 added to the gradient) on W only.
    Each epoch takes floor(N / batch_size) minibatches from a fresh permutation (batch_size is clipped to N).
    W starts as N(0, 0.01^2) and b at zero. The result is a deterministic function of the inputs and seed.

    Returns:
      dict(top1=test accuracy, train_top1=train accuracy, loss=mean train loss over the last epoch), as floats.
    """
    if normalize not in _NORMALIZE_CHOICES:
        raise ValueError(f"train_linear_probe: normalize must be one of {_NORMALIZE_CHOICES}, got {normalize!r}")
    if epochs < 1 or batch_size < 1 or num_classes < 2:
        raise ValueError(
            f"train_linear_probe: need epochs >= 1, batch_size >= 1, num_classes >= 2, got "
            f"epochs={epochs}, batch_size={batch_size}, num_classes={num_classes}"
        )
    x_tr = np.asarray(train_features, np.float32)
    x_te = np.asarray(test_features, np.float32)
    y_tr = np.asarray(train_labels).astype(np.int32)
    y_te = np.asarray(test_labels).astype(np.int32)
    _check_split("train", x_tr, y_tr, num_classes)
    _check_split("test", x_te, y_te, num_classes)
    if x_tr.shape[0] == 0:
        raise ValueError("train_linear_probe: no training features")
    if x_te.shape[1] != x_tr.shape[1]:
        raise ValueError(f"train_linear_probe: feature dims differ: train {x_tr.shape[1]} vs test {x_te.shape[1]}")

    if normalize is not None:
        mu = x_tr.mean(axis=0, dtype=np.float64)
        var = x_tr.var(axis=0, dtype=np.float64)
        inv = 1.0 / np.sqrt(var + 1e-6)
        x_tr = ((x_tr - mu) * inv).astype(np.float32)
        x_te = ((x_te - mu) * inv).astype(np.float32)

    batch_size = min(int(batch_size), x_tr.shape[0])
    params, epoch_losses = _train_probe_jit(
        jnp.asarray(x_tr),
        jnp.asarray(y_tr),
        jax.random.key(seed),
        num_classes=int(num_classes),
        epochs=int(epochs),
        batch_size=batch_size,
        steps_per_epoch=x_tr.shape[0] // batch_size,
        lr=float(lr) * batch_size / 256.0,
        momentum=float(momentum),
        weight_decay=float(weight_decay),
    )
    top1 = float(_accuracy(params, jnp.asarray(x_te), jnp.asarray(y_te))) if x_te.shape[0] else float("nan")
    return dict(
        top1=top1,
        train_top1=float(_accuracy(params, jnp.asarray(x_tr), jnp.asarray(y_tr))),
        loss=float(epoch_losses[-1]),
    )


def online_probe_init(rng, feature_dim: int, num_classes: int) -> dict:
    """Parameters of the online linear probe: {'kernel': zeros [D, C], 'bias': zeros [C]} (float32).

    Zeros are a valid start for a linear softmax classifier (the loss is convex); `rng` is accepted for a uniform
    init signature and unused.
    """
    del rng
    if feature_dim < 1 or num_classes < 2:
        raise ValueError(
            f"online_probe_init: need feature_dim >= 1 and num_classes >= 2, got "
            f"feature_dim={feature_dim}, num_classes={num_classes}"
        )
    return {
        "kernel": jnp.zeros((feature_dim, num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }


def online_probe_loss(params, features, labels):
    """Masked cross-entropy and accuracy of the online probe on stop-gradient features.

    logits = sg(features) W + b; with m_i = [labels_i >= 0] (negative labels mark unlabeled examples):
        loss = sum_i m_i * CE(logits_i, labels_i) / max(sum_i m_i, 1)
        accuracy = sum_i m_i * [argmax logits_i = labels_i] / max(sum_i m_i, 1)
    Both are 0 when no example is labeled. Gradients flow to params only, never to features.

    Args:
      params: {'kernel': [D, C], 'bias': [C]}.
      features: [B, D] encoder features.
      labels: [B] integer labels, < 0 for unlabeled.

    Returns:
      (loss, accuracy), float32 scalars.
    """
    features = jax.lax.stop_gradient(features).astype(jnp.float32)
    logits = features @ params["kernel"] + params["bias"]
    labels = jnp.asarray(labels).astype(jnp.int32)
    mask = (labels >= 0).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(mask), 1.0)
    ce = _cross_entropy(logits, jnp.maximum(labels, 0))
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(mask * ce) / denom, jnp.sum(mask * correct) / denom
