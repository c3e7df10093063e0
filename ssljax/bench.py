"""Throughput benchmark of the full train step (augmentation, objective, optimizer, online probe) on synthetic images.

    python -m ssljax.bench --config configs/simclr.py:dataset=cifar10 --config.batch_size=32 --steps 10 \
        [--reference ../shared/bench/anchor_jax.py]

Prints one JSON line: step_ms, samples_per_s (source images/s), view_images_per_s, per-device rates, devices,
backbone, method. With --reference, also runs the plain-Flax reference step at the same backbone, per-view batch,
resolution and dtype in a subprocess of the same run, and prints the ratio ssljax_step_ms / reference_step_ms.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import numpy as np


def bench(config, steps: int, warmup: int = 2) -> dict:
    from ssljax import config_lib, parallel, train
    from ssljax.data import loader

    mesh = parallel.make_mesh()
    config_lib.validate(config, mesh.devices.size, check_data=False)  # synthetic images
    n = config.batch_size * 4
    size = config.image_size
    rng = np.random.default_rng(0)
    data = parallel.put_replicated({'images': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                                    'labels': rng.integers(0, 10, n).astype(np.int32)}, mesh)
    exp = train.build_experiment(config, mesh, n, 10)
    state = train.init_state(exp)
    step_fn = train.make_train_step(exp)

    def batch(i):
        idx = loader.global_batch_indices(n, config.batch_size, config.seed, i).astype(np.int32)
        return parallel.global_batch_from_host({'index': idx}, mesh)

    for i in range(warmup):
        state, metrics = step_fn(state, batch(i), data)
    jax.block_until_ready(state)
    batches = [batch(warmup + i) for i in range(steps)]
    t0 = time.perf_counter()
    for b in batches:
        state, metrics = step_fn(state, b, data)
    jax.block_until_ready(state)
    dt = (time.perf_counter() - t0) / steps
    devices = mesh.devices.size
    views = len(exp.views)
    return dict(method=config.method, backbone=config.model.backbone, dtype=config.dtype, image_size=size,
                batch=config.batch_size, views=views, devices=devices, platform=jax.devices()[0].platform,
                step_ms=round(dt * 1e3, 2), samples_per_s=round(config.batch_size / dt, 1),
                view_images_per_s=round(views * config.batch_size / dt, 1),
                samples_per_s_per_device=round(config.batch_size / dt / devices, 1),
                loss=float(metrics['loss']))


def reference(path: str, config, steps: int) -> dict:
    """Runs the plain-Flax reference at the same shapes; returns its JSON line."""
    cmd = [sys.executable, path, '--model', config.model.backbone, '--batch', str(config.batch_size),
           '--res', str(config.augment.size), '--dtype', config.dtype, '--steps', str(steps), '--warmup', '2']
    if not config.model.cifar_stem:
        cmd.append('--imagenet-stem')
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith('{')][-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m ssljax.bench')
    parser.add_argument('--config', required=True)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--reference', default='', help='path of ../shared/bench/anchor_jax.py to compare with')
    args, rest = parser.parse_known_args(argv)
    from ssljax import config_lib
    overrides = [r[len('--config.'):] for r in rest if r.startswith('--config.')]
    if len(overrides) != len(rest):
        parser.error(f'unrecognised arguments: {[r for r in rest if not r.startswith("--config.")]}')
    config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
    result = bench(config, args.steps)
    if args.reference:
        ref = reference(args.reference, config, args.steps)
        result['reference_step_ms'] = ref['step_ms']
        result['ratio_to_reference'] = round(result['step_ms'] / ref['step_ms'], 3)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
