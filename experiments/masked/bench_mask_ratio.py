"""Encoder step time against MAE's mask ratio: the ViT sees only the visible patches, so its cost falls with them.

    python experiments/masked/bench_mask_ratio.py [--models vit_tiny vit_small] [--ratios 0 0.5 0.75 0.9] \
        [--batch 8] [--image-size 224] [--repeats 5]

For each model and ratio r, one jitted step draws per-sample masks with round(r N) of the N = (224 / 16)^2 = 196
patches masked (``augment.random_patch_masks``, as the train loop does), runs the encoder forward on the gathered
visible patches (``mask_mode='drop'``) and backward (``jax.value_and_grad`` of the mean square of its outputs, a
stand-in loss that touches every token), and returns the gradients. After two warm-up calls (compilation) the median
of ``repeats`` timed calls is reported, with the ratio to r = 0 and the fraction of tokens the blocks see,
(N_vis + 1) / (N + 1) ([CLS] included): attention is quadratic and the MLPs linear in the tokens, so the time should
fall at least as fast as that fraction once the fixed costs (patch embedding of all N patches, the mask) are small.
Prints one JSON line per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from ssljax.data import augment  # noqa: E402
from ssljax.models import registry  # noqa: E402


def measure(model: str, ratio: float, batch: int, image_size: int, repeats: int, patch: int = 16) -> dict:
    encoder, _ = registry.create_encoder(model, image_size=image_size, patch_size=patch, mask_mode='drop')
    n = (image_size // patch) ** 2
    masked = int(round(ratio * n))
    visible = n - masked
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, image_size, image_size, 3)), jnp.float32)
    params = jax.jit(lambda: encoder.init(jax.random.key(0), x[:1], train=False))()['params']

    def loss(p, key):
        mask = augment.random_patch_masks(key, batch, n, masked)
        out = encoder.apply({'params': p}, x, mask=mask, num_visible=visible)
        return jnp.mean(out['tokens'] ** 2) + jnp.mean(out['cls'] ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    for i in range(2):
        jax.block_until_ready(step(params, jax.random.key(i)))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, jax.random.key(100 + i)))
        times.append(time.perf_counter() - t0)
    return dict(
        model=model,
        ratio=ratio,
        batch=batch,
        image_size=image_size,
        patches=n,
        visible=visible,
        token_fraction=(visible + 1) / (n + 1),
        step_ms=1000 * statistics.median(times),
        min_ms=1000 * min(times),
        repeats=repeats,
        device=str(jax.devices()[0].device_kind),
        platform=jax.default_backend(),
    )


def table(rows: list[dict]) -> str:
    lines = [
        '| model | mask ratio | visible patches | tokens seen (incl. [CLS]) | step ms (median) | min ms | '
        'time / time at 0 |',
        '|---|---|---|---|---|---|---|',
    ]
    base = {}
    for r in rows:
        base.setdefault(r['model'], r['step_ms'] if r['ratio'] == 0 else None)
        b = base[r['model']]
        rel = f'{r["step_ms"] / b:.2f}' if b else '-'
        lines.append(
            f'| {r["model"]} | {r["ratio"]:.2f} | {r["visible"]} / {r["patches"]} | '
            f'{r["token_fraction"]:.2f} | {r["step_ms"]:.1f} | {r["min_ms"]:.1f} | {rel} |'
        )
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--models', nargs='+', default=['vit_tiny', 'vit_small'])
    parser.add_argument('--ratios', nargs='+', type=float, default=[0.0, 0.5, 0.75, 0.9])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for ratio in args.ratios:
            row = measure(model, ratio, args.batch, args.image_size, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f'\n{platform.node()} {jax.default_backend()} {jax.devices()[0].device_kind}, jax {jax.__version__}, '
        f'batch {args.batch}, {args.image_size} px, patch 16\n'
    )
    print(table(rows))


if __name__ == '__main__':
    main()
