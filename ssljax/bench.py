"""Throughput benchmarks: the full train step on synthetic images, or the host input pipeline alone.

    python -m ssljax.bench --config configs/simclr.py:dataset=cifar10 --config.batch_size=32 --steps 10 \
        [--reference ../shared/bench/anchor_jax.py]

Prints one JSON line: step_ms, samples_per_s (source images/s), view_images_per_s, per-device rates, devices,
backbone, method. With --reference, also runs the plain-Flax reference step at the same backbone, per-view batch,
resolution and dtype in a subprocess of the same run, and prints the ratio ssljax_step_ms / reference_step_ms.

    python -m ssljax.bench --data-only --workers N --config configs/simclr.py \
        --config.dataset=image_folder --config.data_dir=DIR --config.image_size=224 --config.augment.size=224 \
        --config.stream=always [--config.batch_size=128] [--steps 30]

Data only: builds the run's training data exactly as training does (``pipeline.load_train_data``, with
``data_workers=N``) and times this host's batches as the step would receive them (numpy, before the transfer to
the devices), after ``2 N + 2`` warm-up batches (worker start-up, buffers filled). Prints one JSON line with
images_per_s (source images per second), view_images_per_s, batch_ms, the data mode, the CPU seconds the process
and its workers spent in the timed window (main_cpu_s: the training process's share) with images_per_cpu_s (the
rate per fully used core, which a machine busy with other work changes much less than the wall-clock rate) and the
load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import numpy as np

from ssljax import cli


def bench(config, steps: int, warmup: int = 2) -> dict:
    from ssljax import configure, parallel, train
    from ssljax.data import loader

    mesh = parallel.make_mesh()
    configure.validate(config, mesh.devices.size, check_data=False)  # synthetic images
    n = config.batch_size * 4
    size = config.image_size
    rng = np.random.default_rng(0)
    data = parallel.put_replicated(
        {
            'images': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            'labels': rng.integers(0, 10, n).astype(np.int32),
        },
        mesh,
    )
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
    return dict(
        method=config.method,
        backbone=config.model.backbone,
        dtype=config.dtype,
        image_size=size,
        batch=config.batch_size,
        views=views,
        devices=devices,
        platform=jax.devices()[0].platform,
        step_ms=round(dt * 1e3, 2),
        samples_per_s=round(config.batch_size / dt, 1),
        view_images_per_s=round(views * config.batch_size / dt, 1),
        samples_per_s_per_device=round(config.batch_size / dt / devices, 1),
        loss=float(metrics['loss']),
    )


def _cpu_seconds() -> np.ndarray:
    """CPU time (user + system) of [this process and its live children (the pipeline's workers), this process]."""
    import psutil  # pylint: disable=import-outside-toplevel  (a dependency of grain)

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that ended between the listing and the read: its time is gone with it
            continue
    t = me.cpu_times()
    return np.asarray([total, t.user + t.system])


def bench_data(config, steps: int, workers: int) -> dict:
    """images/s of this host's input pipeline for ``config`` (see the module doc)."""
    import os

    from ssljax import configure, parallel
    from ssljax.data import pipeline

    load_start = os.getloadavg()
    with config.unlocked():
        config.data_workers = workers
    mesh = parallel.make_mesh()
    configure.validate(config, mesh.devices.size)
    t0 = time.perf_counter()
    data = pipeline.load_train_data(config, mesh)
    setup_s = time.perf_counter() - t0
    if data.mode == 'device':
        raise SystemExit(
            'ssljax: error: this dataset is device-resident (the step gathers its batches on the '
            'device): there is no host pipeline to time; use --config.stream=always or '
            '--config.device_data_max_mb=0'
        )
    warmup = 2 * workers + 2
    batches = data.host_batches(0, num_steps=warmup + steps)
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):
            shape = next(batches)['image'].shape
        t1, cpu1 = time.perf_counter(), _cpu_seconds()
        for _ in range(steps):
            next(batches)
        dt, (cpu, main_cpu) = time.perf_counter() - t1, _cpu_seconds() - cpu1
    finally:
        batches.close()
    views = [v.size for v in data.views] if data.mode == 'stream' else []
    images = steps * shape[0]
    return dict(
        mode=data.mode,
        dataset=config.dataset,
        examples=data.num_examples,
        workers=workers,
        cpu_count=os.cpu_count(),
        host_batch=int(shape[0]),
        view_sizes=views,
        batch_shape=list(shape),
        steps=steps,
        setup_s=round(setup_s, 2),
        warmup_s=round(t1 - t0, 2),
        batch_ms=round(dt / steps * 1e3, 1),
        images_per_s=round(images / dt, 1),
        cpu_s=round(cpu, 2),
        main_cpu_s=round(main_cpu, 2),
        images_per_cpu_s=round(images / cpu, 1) if cpu > 0 else None,
        view_images_per_s=round(images * max(1, len(views)) / dt, 1),
        loadavg_start=[round(x, 2) for x in load_start],
        loadavg_end=[round(x, 2) for x in os.getloadavg()],
    )


def reference(path: str, config, steps: int) -> dict:
    """Runs the plain-Flax reference at the same shapes; returns its JSON line."""
    cmd = [
        sys.executable,
        path,
        '--model',
        config.model.backbone,
        '--batch',
        str(config.batch_size),
        '--res',
        str(config.augment.size),
        '--dtype',
        config.dtype,
        '--steps',
        str(steps),
        '--warmup',
        '2',
    ]
    if not config.model.cifar_stem:
        cmd.append('--imagenet-stem')
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith('{')][-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog=cli.prog('python -m ssljax.bench'))
    parser.add_argument('--config', required=True)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--reference', default='', help='path of ../shared/bench/anchor_jax.py to compare with')
    parser.add_argument('--data-only', action='store_true', help='time the host input pipeline alone')
    parser.add_argument(
        '--workers',
        type=int,
        default=-1,
        help='--data-only: grain worker processes (-1: one per core, 0: threads of this process)',
    )
    args, overrides = cli.parse_known(parser, argv)

    def run():
        from ssljax import configure

        config = configure.load_config_with_overrides(args.config, overrides, log=lambda m: print(m, file=sys.stderr))
        if args.data_only:
            print(json.dumps(bench_data(config, args.steps, args.workers)), flush=True)
            return
        result = bench(config, args.steps)
        if args.reference:
            ref = reference(args.reference, config, args.steps)
            result['reference_step_ms'] = ref['step_ms']
            result['ratio_to_reference'] = round(result['step_ms'] / ref['step_ms'], 3)
        print(json.dumps(result), flush=True)

    code = cli.run_reporting_errors(run)
    if code:
        sys.exit(code)


if __name__ == '__main__':
    main()
