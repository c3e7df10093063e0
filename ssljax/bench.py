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

    python -m ssljax.bench --memory --config configs/mae.py:dataset=imagenet2012,backbone=vit_huge \
        --config.model.patch_size=14 --config.batch_size=4096 [--topology v5e-256 | --cpu-devices 8] \
        [--config.model.remat=block --config.model.scan=true ...]

Memory: builds the run's experiment and the train step exactly as training does (``train.build_experiment``,
``train.make_train_step``), with the state abstract (``jax.eval_shape`` of ``train.init_state``, placed with
``train.state_shardings``: nothing is allocated), lowers and compiles the step ahead of time, and prints one JSON
line from the compiled executable: ``memory_analysis()`` per device (arguments, outputs, aliased (donated) bytes,
temporaries, generated code), ``state_bytes_per_device`` (the train state's shards on the fullest device),
``total_bytes_per_device`` (arguments + outputs - aliased + temporaries + code: the peak XLA plans for),
``cost_analysis()``'s ``flops`` (of one device's program), the compile seconds and the mesh. The batch is the one a
host-fed run sends (``uint8 [B, image_size, image_size, 3]``, labels, indices, sharded over the batch axes); no
dataset is read.

The devices: this machine's (on CPU, ``--cpu-devices N`` simulates N), or with ``--topology`` a TPU slice that is
not there: ``v5e-256``, ``v4-1024``, ``v5p-512`` (the cores count for v4 / v5p as in their product names, chips
for v5e / v6e) or a libtpu topology name (``v5e:16x16``), compiled by libtpu through
``jax.experimental.topologies.get_topology_desc`` (``pip install 'ssljax[topology]'``: the libtpu that the
installed jax pins; install it in an environment of its own, see docs/scaling.md). The mesh is the config's
(``config.mesh`` / ``config.sharding_strategy`` where the config has them) over those devices.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssljax import cli, config_lib


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


# ----- memory at scale: the compiled step's plan, without running it ------------------------------------------------
TPU_2D = ('v5e', 'v6e')  # product name counts chips; 2-D torus
TPU_3D = ('v4', 'v5p')  # product name counts TensorCores (2 per chip, one megacore device); 3-D torus


def _torus(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape of ``chips`` (a power of 2): double the smallest side, the last of equals first
    (v5e: 8 -> 2x4, 256 -> 16x16; v4 / v5p from 2x2x1: 8 -> 2x2x2, 512 -> 8x8x8, 1024 -> 8x8x16)."""
    shape = [1] * dims
    if dims == 3:
        shape = [2, 2, 1]
    if chips < math.prod(shape) or chips & (chips - 1):
        raise ValueError(f'{chips} chips: not a power of 2 of at least {math.prod(shape)}')
    while math.prod(shape) < chips:
        i = max(j for j in range(dims) if shape[j] == min(shape))
        shape[i] *= 2
    return tuple(shape)


def topology_spec(name: str) -> dict:
    """'v5e-256' -> {'topology_name': 'v5e:16x16', 'chip_config_name': 'default', 'chips': 256}; a libtpu name with
    ':' passes through. ValueError for a name of another form."""
    if ':' in name:
        return dict(topology_name=name, chip_config_name=None, chips=None)
    kind, _, count = name.partition('-')
    if not count.isdigit() or kind not in TPU_2D + TPU_3D:
        raise ValueError(
            f'unknown --topology {name!r}: use v5e-N, v6e-N (N chips), v4-N, v5p-N (N TensorCores) or a libtpu '
            'name such as v5e:16x16'
        )
    n = int(count)
    if kind in TPU_2D:
        shape, config_name = _torus(n, 2), 'default'
    else:
        shape, config_name = _torus(n // 2, 3), 'megacore'
    libtpu_kind = 'v5' if kind == 'v5p' else kind
    return dict(
        topology_name=f'{libtpu_kind}:{"x".join(map(str, shape))}', chip_config_name=config_name, chips=math.prod(shape)
    )


def topology_devices(name: str) -> list:
    """The devices of a TPU slice compiled for by libtpu on this machine (no TPU needed)."""
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    spec = topology_spec(name)
    kwargs = dict(topology_name=spec['topology_name'], platform='tpu')
    if spec['chip_config_name']:
        kwargs.update(chip_config_name=spec['chip_config_name'], chips_per_host_bounds=(2, 2, 1))
    try:
        devices = list(topologies.get_topology_desc(**kwargs).devices)
    except Exception as e:  # no libtpu, or one that does not know this topology
        raise SystemExit(
            f'ssljax: error: cannot describe TPU topology {name!r} ({spec["topology_name"]}): '
            f'{type(e).__name__}: {str(e).splitlines()[0][:300]}. Install libtpu: pip install "ssljax[topology]"'
        ) from None
    if spec['chips'] and len(devices) != spec['chips']:
        raise SystemExit(f'ssljax: error: topology {name!r} gave {len(devices)} devices, expected {spec["chips"]}')
    return devices


def _shard_bytes(abstract) -> int:
    """Bytes of the largest shard set one device holds of the abstract arrays ``abstract`` (with shardings)."""
    per_device: dict = {}
    for leaf in jax.tree.leaves(abstract):
        itemsize = np.dtype(leaf.dtype).itemsize
        for device, index in leaf.sharding.devices_indices_map(leaf.shape).items():
            size = math.prod(len(range(*sl.indices(dim))) for sl, dim in zip(index, leaf.shape))
            per_device[device] = per_device.get(device, 0) + size * itemsize
    return max(per_device.values(), default=0)


def bench_memory(config, topology: str = '') -> dict:
    """Compiles the real train step for this machine's devices or a TPU ``topology`` and reads its memory plan."""
    from ssljax import configure, parallel, train

    devices = topology_devices(topology) if topology else jax.devices()
    mesh = configure.mesh_from_config(config, devices)
    configure.validate(config, mesh.devices.size, check_data=False)  # synthetic shapes
    num_examples, num_classes = max(config.batch_size, 1_281_167), max(config.num_classes, 2)
    t0 = time.perf_counter()
    exp = train.build_experiment(config, mesh, num_examples, num_classes)
    shapes = jax.eval_shape(lambda: train.init_state(exp))
    shardings = train.state_shardings(exp, shapes)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    b, size = config.batch_size, config.image_size or config.augment.size
    batch_sharding = parallel.batch_sharded(mesh)
    batch = {
        'image': jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=batch_sharding),
        'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
        'index': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
    }
    step = train.make_train_step(exp, state)
    setup_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = step.lower(state, batch, {})
    lower_s, lower_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        compiled = lowered.compile()
    except Exception as e:  # libtpu refuses a program over the chip's HBM: that is the answer, not a failure
        if 'RESOURCE_EXHAUSTED' not in str(e):
            raise
        message = str(e).splitlines()[0]
        return dict(
            method=config.method,
            backbone=config.model.backbone,
            remat=config.model.get('remat', 'none'),
            scan=bool(config.model.get('scan', False)),
            batch=b,
            devices=int(mesh.devices.size),
            batch_per_device=b / mesh.devices.size,
            device_kind=devices[0].device_kind,
            topology=topology or None,
            mesh={name: int(n) for name, n in mesh.shape.items()},
            fits=False,
            compile_error=message[:500],
            state_bytes_per_device=_shard_bytes(state),
            compile_s=round(time.perf_counter() - t0, 2),
            compile_cpu_s=round(time.process_time() - c0, 2),
        )
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp, code = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes), int(mem.generated_code_size_in_bytes)
    total = arg + out - alias + temp + code
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params['encoder']))
    gib = 2.0**30
    views = [v.size for v in exp.views]
    state_bytes = _shard_bytes(state)
    return dict(
        method=config.method,
        backbone=config.model.backbone,
        encoder_params=n_params,
        patch_size=int(getattr(exp.encoder, 'patch_size', 0)),
        remat=config.model.get('remat', 'none'),
        scan=bool(config.model.get('scan', False)),
        dtype=config.dtype,
        batch=b,
        devices=int(mesh.devices.size),
        batch_per_device=b / mesh.devices.size,
        views=views,
        platform=devices[0].platform,
        device_kind=devices[0].device_kind,
        topology=topology or None,
        mesh={name: int(n) for name, n in mesh.shape.items()},
        sharding_strategy=[list(r) for r in config_lib.scale_setting(config, 'sharding_strategy')] or None,
        sharding_min_size_mb=float(config_lib.scale_setting(config, 'sharding_min_size_mb')),
        state_bytes_per_device=state_bytes,
        argument_bytes_per_device=arg,
        output_bytes_per_device=out,
        alias_bytes_per_device=alias,
        temp_bytes_per_device=temp,
        code_bytes_per_device=code,
        total_bytes_per_device=total,
        state_gib_per_device=round(state_bytes / gib, 3),
        temp_gib_per_device=round(temp / gib, 3),
        total_gib_per_device=round(total / gib, 3),
        flops=float(cost.get('flops', float('nan'))) if cost else None,
        flops_scope='one device program',
        setup_s=round(setup_s, 2),
        lower_s=round(lower_s, 2),
        compile_s=round(compile_s, 2),
        lower_cpu_s=round(lower_cpu_s, 2),  # CPU seconds of this process (all its threads): less load-dependent
        compile_cpu_s=round(compile_cpu_s, 2),
        loadavg=[round(x, 2) for x in os.getloadavg()],
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
    parser.add_argument('--memory', action='store_true', help='compile the train step and print its memory plan')
    parser.add_argument('--topology', default='', help='--memory for a TPU slice: v5e-256, v4-1024, v5p-512, ...')
    parser.add_argument('--cpu-devices', type=int, default=0, help='--memory on N simulated CPU devices')
    args, overrides = cli.parse_known(parser, argv)
    if (args.topology or args.cpu_devices) and not args.memory:
        parser.error('--topology and --cpu-devices go with --memory')
    if args.cpu_devices:  # before JAX starts its backends
        flags = os.environ.get('XLA_FLAGS', '')
        os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={args.cpu_devices}'.strip()
    if args.topology:
        # Compile for the slice from this machine: JAX itself stays on the CPU, libtpu asks no metadata server and
        # shares its lock with other processes that load it.
        os.environ.setdefault('JAX_PLATFORMS', 'cpu')
        os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
        os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

    def run():
        from ssljax import configure

        config = configure.load_config_with_overrides(args.config, overrides, log=lambda m: print(m, file=sys.stderr))
        if args.data_only:
            print(json.dumps(bench_data(config, args.steps, args.workers)), flush=True)
            return
        if args.memory:
            print(json.dumps(bench_memory(config, args.topology)), flush=True)
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
