"""Driver of experiments/gpu/run.sh: issue 22's GPU measurements, in one command, within one time budget.

    python experiments/gpu/run_gpu.py --out OUTDIR [--dry-run] [--budget-s 530] [--parts a,b] [--reference PATH]
        [--data PACKED_DIR] [--methods simclr,byol]

Parts, in this order (each checks the wall clock from the command's start, gets a time cap, and records a skip or
a cut with its reason when the budget does not allow it; one JSON line per measurement in OUTDIR/results.jsonl,
flushed as it finishes, and OUTDIR/table.md rewritten after each):

    env         versions, device (nvidia-smi), the plan
    data        the packed CIFAR-10 JPEG copy (pack_cifar10_jpeg.py's train.npz / test.npz / classes.txt)
                unpacked into an image folder (ssljax's image_folder dataset reads it)
    step_r18    python -m ssljax.bench: the full SimCLR step (augmentation, LARS, online probe) against the plain-Flax
                reference (anchor_jax.py, its own process of the same command), ResNet-18 CIFAR stem, 2 x 256, 32 px,
                bf16
    step_r50    the same at ResNet-50, 2 x 128, 224 px
    profile     one jax.profiler trace of the step_r18 step: its five most expensive ops (device time)
    simclr_c10  solo-learn's SimCLR CIFAR-10 recipe (configs/simclr.py:dataset=cifar10), 40 epochs, ResNet-18 on the
                JPEG copy: online probe, kNN and linear top-1, wall time; beside solo-learn's 67.6% in 465 s (H100)
    methods     one step time per method config at the CIFAR shape (bench.bench in one process, as many as fit)
    speedrun    configs/speedrun_cifar10.py, as many epochs as the time left allows: kNN top-1 against the wall
                time from the training command's start, one JSON line per curve point as it is evaluated

simclr_c10 runs before methods (the issue lists it second): it is the more important result, and a method table
cut short by its cap is easy to finish in a later session (``--parts methods --methods ...``).

--dry-run: every part at tiny sizes on the CPU (tiny models, 8-16 px, a few steps, a few images of the packed copy
or a synthetic packed set when it is absent) so that a typo cannot waste GPU time (tests/test_gpu_script.py).
``--worker`` is internal: the parts that need JAX in-process run in a child process (this driver never imports JAX,
so the GPU's memory stays free for the commands it starts).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import io
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))

# ----- the plan: seconds on one H100 (estimates are guesses from BENCHMARKS.md's step rates; caps are enforced) -----
#   step_r18: compile of the full step (~30 s) + 42 steps, then the reference's start and compile (~20 s)
#   step_r50: the same at ResNet-50 / 224 px (~60 s compile with cuDNN autotuning, 22 steps of ~50 ms; the
#             reference's start and compile ~45 s)
#   profile: the step_r18 executable again (a persistent-cache hit) under the profiler
#   simclr_c10: image decode (~10 s), compile (~30 s), 7,800 steps at about 8-9 ms (1.2x the plain-Flax 7.1 ms,
#               ~70 s), final evaluation with a 100-epoch linear probe (~20 s)
#   methods: ~25 s each (a compile each): about 3 in the cap
#   speedrun: whatever is left, at least SPEEDRUN_MIN_S
PLAN = collections.OrderedDict(
    env=dict(estimate_s=5, cap_s=30),
    data=dict(estimate_s=10, cap_s=60),
    step_r18=dict(estimate_s=60, cap_s=100),
    step_r50=dict(estimate_s=110, cap_s=150),
    profile=dict(estimate_s=20, cap_s=40),
    simclr_c10=dict(estimate_s=150, cap_s=220),
    methods=dict(estimate_s=90, cap_s=90),
    speedrun=dict(estimate_s=100, cap_s=10_000),
)
DEFAULT_BUDGET_S = 530.0  # the whole command in under 9 minutes (the device call's limit is 10)
SPEEDRUN_MIN_S = 60.0  # below this the speedrun is skipped (compile and decode alone take about 40 s)
SPEEDRUN_RESERVE_S = 100.0  # methods leaves this much for the speedrun when it can
DRY_BUDGET_S = 1500.0
DRY_CAP_S = 400.0

# Published / earlier-measured references printed beside the rows (not measured by this script).
TURN1_H100 = {
    'step_r18': 'plain Flax 7.1 ms, PyTorch eager 13.8 ms (turn-1 H100, ../shared/DESIGN.md, outside the repository)',
    'step_r50': 'plain Flax 45.2 ms, PyTorch eager 68.4 ms (turn-1 H100, ../shared/DESIGN.md, outside the repository)',
}
SOLO_LEARN = dict(online_probe_top1=0.676, wall_s=465.0, s_per_epoch=11.3, device='one H100')

# Method configs in the order the per-method table measures them (most used first); every file of configs/ except
# common.py and the speedrun recipe, which is checked by configs/ tests and run by the speedrun part.
METHOD_ORDER = (
    'simclr',
    'byol',
    'mocov2',
    'mocov3',
    'barlow_twins',
    'vicreg',
    'simsiam',
    'dino',
    'directpred',
    'dcl',
    'dclw',
    'mochi',
    'triplet',
    'isogclr',
    'gsimclr',
    'contrastive_clustering',
    'densecl',
    'mae',
    'simmim',
    'masked_contrastive',
)
DRY_BENCH_METHODS = ('simclr', 'byol')  # the dry run benches these two (the in-process loop); it loads every one

CIFAR_SPEC = 'configs/simclr.py:dataset=cifar10'
R50_OVERRIDES = [
    '--config.model.backbone=resnet50',
    '--config.model.cifar_stem=false',
    '--config.image_size=224',
    '--config.augment.size=224',
    '--config.batch_size=128',
]
DRY_STEP = ['--config.batch_size=2', '--config.image_size=8', '--config.augment.size=8', '--config.dtype=float32']
DRY_R50 = [
    '--config.model.backbone=resnet_tiny',
    '--config.model.cifar_stem=false',
    '--config.image_size=16',
    '--config.augment.size=16',
    '--config.batch_size=2',
    '--config.dtype=float32',
]
DRY_TRAIN = [
    '--config.batch_size=16',
    '--config.dtype=float32',
    '--config.evals.knn.k=10',
    '--config.eval.batch_size=64',
]
C10_OVERRIDES = ['--config.eval.random_init_baseline=false', '--config.checkpoint_every=0']
TRACE_MAX_BYTES = 12 * 2**20  # a trace file this small comes back with OUTDIR (the device call returns 8 files)


def speedrun_spec(epochs, points) -> str:
    return f'configs/speedrun_cifar10.py:epochs={epochs},points={points}'


def methods_available() -> list[str]:
    files = {f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py')}
    files -= {'common', '__init__', 'speedrun_cifar10'}
    return [m for m in METHOD_ORDER if m in files] + sorted(files - set(METHOD_ORDER))


# ---------------------------------------------------------------------------------------------------- recording


class Recorder:
    """results.jsonl (one JSON object a line, flushed and synced as each is written) and table.md (rewritten)."""

    def __init__(self, out: str, t0: float, header: dict):
        self.out, self.t0, self.header = out, t0, header
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, 'results.jsonl')
        self.rows: list[dict] = []

    def elapsed(self) -> float:
        return time.time() - self.t0

    def record(self, part: str, kind: str, **fields) -> dict:
        row = {'part': part, 'kind': kind, 't_s': round(self.elapsed(), 1), **fields}
        with open(self.path, 'a') as f:
            f.write(json.dumps(row, default=str) + '\n')
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        print(f'[{row["t_s"]:7.1f} s] {part} {kind}: ' + json.dumps(fields, default=str)[:400], flush=True)
        self.write_table()
        return row

    def write_table(self) -> None:
        tmp = os.path.join(self.out, 'table.md.tmp')
        with open(tmp, 'w') as f:
            f.write(render_table(self.header, self.rows))
        os.replace(tmp, os.path.join(self.out, 'table.md'))


def _fmt(v, digits=1):
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return str(v)


def _pct(v):
    return '-' if v is None else f'{100 * v:.1f}%'


def render_table(header: dict, rows: list[dict]) -> str:
    """The final table rows, in markdown, from the records so far."""
    by = collections.defaultdict(list)
    for r in rows:
        by[(r['part'], r['kind'])].append(r)
    env = next((r for r in rows if r['kind'] == 'env'), {})
    lines = [
        '# GPU session results ('
        + ('DRY RUN on the CPU, tiny sizes: not a measurement' if header['dry_run'] else 'measured')
        + ')',
        '',
        f'- device: {env.get("gpu") or env.get("platform_guess") or "-"}; started {header["started_utc"]}; '
        f'budget {header["budget_s"]:.0f} s; command `{header["command"]}`',
        f'- packages: {json.dumps(env.get("packages", {}))}',
        '',
        '## 1. The full method step against the plain-Flax reference (same command, bf16)',
        '',
        '| shape | ssljax step (ms) | samples/s | view-images/s | reference step (ms) | ssljax / reference | '
        'earlier H100 references | command |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for part in ('step_r18', 'step_r50'):
        for r in by[(part, 'step')]:
            b = r['bench']
            lines.append(
                f'| {r["shape"]} | {_fmt(b.get("step_ms"), 2)} | {_fmt(b.get("samples_per_s"))} | '
                f'{_fmt(b.get("view_images_per_s"))} | {_fmt(b.get("reference_step_ms"), 2)} | '
                f'{_fmt(b.get("ratio_to_reference"), 3)} | {TURN1_H100.get(part, "")} | `{r["command"]}` |'
            )
    for r in by[('profile', 'top_ops')]:
        lines += [
            '',
            f'### Top five ops of the ResNet-18 step (jax.profiler, {r["source"]}, module {r["module"]}, '
            f'{r["executions"]} executions, {_fmt(r["module_ms_per_execution"], 2)} ms of op time each)',
            '',
            '| op | ms per step | share of op time | launches per step | what |',
            '|---|---|---|---|---|',
        ]
        for op in r['top']:
            lines.append(
                f'| {op["name"]} | {_fmt(op["ms_per_execution"], 3)} | {_pct(op["share"])} | '
                f'{_fmt(op["count_per_execution"], 1)} | {op.get("detail", "")[:120].replace("|", "/")} |'
            )
        lines += ['', '| op kind (all ops of that kind) | ms per step | share |', '|---|---|---|']
        for k in r.get('top_kinds', []):
            lines.append(f'| {k["kind"]} | {_fmt(k["ms_per_execution"], 3)} | {_pct(k["share"])} |')
    for r in by[('simclr_c10', 'summary')]:
        s = r['summary']
        lines += [
            '',
            '## 2. SimCLR, solo-learn CIFAR-10 recipe, 40 epochs, ResNet-18, on the JPEG copy',
            '',
            '| run | epochs | online probe top-1 | kNN top-1 | linear top-1 | training s | wall s (command) | '
            'samples/s |',
            '|---|---|---|---|---|---|---|---|',
            f'| ssljax | {_fmt(s.get("epochs"))} | {_pct(s.get("online_probe_top1"))} | {_pct(s.get("knn_top1"))} | '
            f'{_pct(s.get("linear_top1"))} | {_fmt(s.get("train_s_this_run"))} | {_fmt(r.get("command_wall_s"))} | '
            f'{_fmt(s.get("train_samples_per_s"))} |',
            f'| solo-learn (measured earlier, {SOLO_LEARN["device"]}) | 40 | {_pct(SOLO_LEARN["online_probe_top1"])} | '
            f'- | - | {SOLO_LEARN["wall_s"]:.0f} | - | - |',
            '',
            f'command: `{r["command"]}`',
        ]
    method_rows = by[('methods', 'step')]
    if method_rows:
        base = next((m['bench'] for m in method_rows if m['method'] == 'simclr' and 'bench' in m), None)
        lines += [
            '',
            '## Per-method step at the CIFAR shape (each config\'s :dataset=cifar10 variant, synthetic images)',
            '',
            '| method | backbone | batch | views | step (ms) | samples/s | view-images/s | step vs simclr |',
            '|---|---|---|---|---|---|---|---|',
        ]
        for m in method_rows:
            b = m.get('bench')
            if b is None:
                lines.append(f'| {m["method"]} | - | - | - | error: {m.get("error", "")[:100]} | - | - | - |')
                continue
            rel = b['step_ms'] / base['step_ms'] if base else None
            lines.append(
                f'| {m["method"]} | {b["backbone"]} | {b["batch"]} | {b["views"]} | {_fmt(b["step_ms"], 2)} | '
                f'{_fmt(b["samples_per_s"])} | {_fmt(b["view_images_per_s"])} | {_fmt(rel, 2)} |'
            )
    curve = by[('speedrun', 'curve')]
    if curve or by[('speedrun', 'summary')]:
        lines += [
            '',
            '## 3. Speedrun: kNN top-1 against wall time from the command\'s start (configs/speedrun_cifar10.py)',
            '',
            '| wall s | step | epoch | kNN top-1 | online probe top-1 |',
            '|---|---|---|---|---|',
        ]
        for c in curve:
            lines.append(
                f'| {_fmt(c["wall_s"])} | {c["step"]} | {_fmt(c.get("epoch"), 2)} | {_pct(c.get("knn_top1"))} | '
                f'{_pct(c.get("online_probe_top1"))} |'
            )
        for r in by[('speedrun', 'summary')]:
            lines += ['', f'command: `{r["command"]}`; planned from: {json.dumps(r.get("plan", {}))}']
    notes = [r for r in rows if r['kind'] in ('skip', 'cut', 'error')]
    if notes:
        lines += ['', '## Skipped, cut or failed', '', '| part | what | reason |', '|---|---|---|']
        for r in notes:
            lines.append(f'| {r["part"]} | {r["kind"]} | {str(r.get("reason", ""))[:300].replace("|", "/")} |')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------- processes


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env['PYTHONUNBUFFERED'] = '1'
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_proc(cmd, timeout_s: float, env=None, on_line=None, poll=None, grace_s: float = 30.0) -> dict:
    """Runs ``cmd`` in its own process group: stderr to ours (the log), stdout lines to ``on_line`` and the log.

    ``poll()`` is called about twice a second while it runs. Past ``timeout_s``: SIGTERM to the group (ssljax.main
    saves a checkpoint and stops), then SIGKILL after ``grace_s``. -> {rc, lines, timed_out, wall_s}.
    """
    print('$ ' + ' '.join(cmd), flush=True)
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, timed_out, term_at, done = [], False, None, False
    while True:
        try:
            line = lines.get(timeout=0.5)
            if line is None:
                done = True
            else:
                sys.stdout.write(line)
                sys.stdout.flush()
                out.append(line.rstrip('\n'))
                if on_line:
                    on_line(line.rstrip('\n'))
        except queue.Empty:
            pass
        if poll:
            poll()
        if done and proc.poll() is not None:
            break
        now = time.time()
        if proc.poll() is None and not timed_out and now - start > timeout_s:
            timed_out, term_at = True, now
            print(f'time cap of {timeout_s:.0f} s reached: SIGTERM to process group {proc.pid}', flush=True)
            os.killpg(proc.pid, signal.SIGTERM)
        if term_at is not None and proc.poll() is None and now - term_at > grace_s:
            print(f'still running {grace_s:.0f} s after SIGTERM: SIGKILL to process group {proc.pid}', flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            term_at = float('inf')
        if done and proc.poll() is None:
            time.sleep(0.1)
    if poll:
        poll()
    return dict(rc=proc.returncode, lines=out, timed_out=timed_out, wall_s=round(time.time() - start, 2))


def last_json(lines: list[str]):
    for line in reversed(lines):
        if line.startswith('{'):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def read_jsonl(path: str) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line being written
                    break
    return rows


# ------------------------------------------------------------------------------------------------------ data


def write_packed(out: str, splits: dict, classes: list[str]) -> None:
    """Writes pack_cifar10_jpeg.py's format: OUT/<split>.npz (data uint8 bytes, offsets int64[n+1], labels int32[n])
    and OUT/classes.txt. ``splits``: {split: [(jpeg bytes, label), ...]}."""
    import numpy as np

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'classes.txt'), 'w') as f:
        f.write('\n'.join(classes) + '\n')
    for split, items in splits.items():
        offsets = np.zeros(len(items) + 1, np.int64)
        offsets[1:] = np.cumsum([len(b) for b, _ in items])
        data = np.frombuffer(b''.join(b for b, _ in items), np.uint8)
        labels = np.asarray([lab for _, lab in items], np.int32)
        np.savez(os.path.join(out, f'{split}.npz'), data=data, offsets=offsets, labels=labels)


def synthetic_packed(out: str, per_class=(8, 4), size: int = 16, classes: int = 4) -> None:
    """A tiny packed set of random JPEGs (the dry run without the real packed copy)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f'class{i}' for i in range(classes)]
    splits = {}
    for split, n in zip(('train', 'test'), per_class):
        items = []
        for label in range(classes):
            for _ in range(n):
                buf = io.BytesIO()
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                img[..., label % 3] = 255 - label * 20  # a class-dependent colour, so features can separate them
                Image.fromarray(img).save(buf, format='JPEG', quality=90)
                items.append((buf.getvalue(), label))
        splits[split] = items
    write_packed(out, splits, names)


def unpack(packed: str, dest: str, limit_per_class: dict | None = None) -> dict:
    """Packed copy -> ``dest/<split>/<class>/<index>.jpg`` (the layout of image_folder). -> images per split."""
    import numpy as np

    with open(os.path.join(packed, 'classes.txt')) as f:
        classes = [c for c in f.read().split('\n') if c]
    counts = {}
    for split in ('train', 'test'):
        with np.load(os.path.join(packed, f'{split}.npz')) as z:
            data, offsets, labels = z['data'], z['offsets'], z['labels']
        if len(offsets) != len(labels) + 1 or offsets[-1] != len(data):
            raise ValueError(f'{packed}/{split}.npz: offsets do not match data and labels')
        for name in classes:
            os.makedirs(os.path.join(dest, split, name), exist_ok=True)
        taken = collections.Counter()
        limit = (limit_per_class or {}).get(split)
        for i, label in enumerate(labels.tolist()):
            if limit is not None and taken[label] >= limit:
                continue
            taken[label] += 1
            with open(os.path.join(dest, split, classes[label], f'{i:05d}.jpg'), 'wb') as f:
                f.write(data[offsets[i] : offsets[i + 1]].tobytes())
        counts[split] = sum(taken.values())
    return counts


# ------------------------------------------------------------------------------------------------ trace parsing


def parse_trace(trace_dir: str, top: int = 5, executions_hint: int | None = None) -> dict:
    """Top ops by time from the newest ``*.trace.json.gz`` under ``trace_dir`` (what jax.profiler writes under
    plugins/profile/<run>/, beside the .xplane.pb; no TensorBoard plug-in needed).

    Device ops: the events of the '/device:...' processes (GPU), from their 'XLA Ops' thread when there is one; on
    a CPU, where the ops run on host threads, the events that carry an ``hlo_op`` argument. Only the heaviest HLO
    module counts (the train step; the trace also holds initialisation and data transfers). Times are per execution
    of that module (the number of its executions: distinct ``run_id``s, or its events on the 'XLA Modules' thread).
    """
    files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True), key=os.path.getmtime)
    if not files:
        files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.json.gz'), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}: {os.listdir(trace_dir)}')
    path = files[-1]
    with gzip.open(path, 'rt') as f:
        trace = json.load(f)
    events = trace['traceEvents'] if isinstance(trace, dict) else trace
    pnames, tnames = {}, {}
    for e in events:
        if e.get('ph') == 'M' and e.get('name') == 'process_name':
            pnames[e['pid']] = e['args']['name']
        elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
            tnames[(e['pid'], e['tid'])] = e['args']['name']
    device_pids = {p for p, n in pnames.items() if n.startswith('/device:')}
    complete = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
    if device_pids:
        source = 'device'
        dev = [e for e in complete if e['pid'] in device_pids]
        ops_threads = {k for k, n in tnames.items() if k[0] in device_pids and n == 'XLA Ops'}
        ops = [e for e in dev if (e['pid'], e.get('tid')) in ops_threads] if ops_threads else []
        if not ops:
            ops = [e for e in dev if 'hlo_op' in (e.get('args') or {})]
        if not ops:
            skip = {'XLA Modules', 'Steps', 'XLA TraceMe', 'Framework Ops', 'Source code'}
            ops = [e for e in dev if tnames.get((e['pid'], e.get('tid')), '') not in skip]
        module_events = [
            e for e in dev if tnames.get((e['pid'], e.get('tid')), '') == 'XLA Modules'
        ]  # one per module execution
    else:
        source = 'host (no device events: CPU backend)'
        ops = [e for e in complete if 'hlo_op' in (e.get('args') or {})]
        module_events = []
    if not ops:
        raise ValueError(f'{path}: no op events found ({len(events)} events, processes {sorted(pnames.values())})')

    def module_of(e):
        return (e.get('args') or {}).get('hlo_module', '?')

    per_module = collections.Counter()
    for e in ops:
        per_module[module_of(e)] += e['dur']
    module = per_module.most_common(1)[0][0]
    mine = [e for e in ops if module_of(e) == module]
    run_ids = {(e.get('args') or {}).get('run_id') for e in mine} - {None}
    executions, executions_from = len(run_ids), 'run_id'
    if not executions:
        executions = sum(1 for e in module_events if module.split('(')[0] in e.get('name', ''))
        executions_from = 'XLA Modules events'
    if not executions:
        executions, executions_from = executions_hint or 1, 'the steps run (warm-up included)'
    total = collections.Counter()
    count = collections.Counter()
    detail = {}
    for e in mine:
        name = (e.get('args') or {}).get('hlo_op') or e['name']
        total[name] += e['dur']
        count[name] += 1
        args = e.get('args') or {}
        detail.setdefault(name, args.get('long_name') or args.get('hlo_category') or e['name'])
    all_us = sum(total.values())
    kinds = collections.Counter()
    for name, us in total.items():
        kinds[re.sub(r'\.\d+$', '', name)] += us  # fusion.12 -> fusion: the op's kind
    rows = [
        dict(
            name=name,
            ms_per_execution=round(us / executions / 1e3, 4),
            share=round(us / all_us, 4),
            count_per_execution=round(count[name] / executions, 2),
            detail=str(detail[name])[:200],
        )
        for name, us in total.most_common(top)
    ]
    return dict(
        trace_file=path,
        source=source,
        module=module,
        executions=executions,
        executions_from=executions_from,
        module_ms_per_execution=round(all_us / executions / 1e3, 3),
        distinct_ops=len(total),
        top=rows,
        top_kinds=[
            dict(kind=k, ms_per_execution=round(us / executions / 1e3, 4), share=round(us / all_us, 4))
            for k, us in kinds.most_common(top)
        ],
    )


# ------------------------------------------------------------------------------------------------------ workers


def worker_step(job: dict) -> None:
    """bench.bench at the job's config, printed; then bench.reference at the same shapes, printed (or its error)."""
    from ssljax import bench, configure

    config = configure.load_config_with_overrides(
        job['spec'], job['overrides'], log=lambda m: print(m, file=sys.stderr)
    )
    print(json.dumps(dict(bench=bench.bench(config, job['steps']))), flush=True)
    if job['reference']:
        try:
            print(json.dumps(dict(reference=bench.reference(job['reference'], config, job['steps']))), flush=True)
        except subprocess.CalledProcessError as e:
            tail = (e.stderr or '').strip().splitlines()[-3:]
            print(json.dumps(dict(reference_error=f'exit {e.returncode}: ' + ' / '.join(tail)[:400])), flush=True)


def worker_check(jobs: list) -> None:
    """Loads and validates each job's config (no data read, nothing compiled); one JSON line each."""
    from ssljax import configure

    for job in jobs:
        try:
            c = configure.load_config_with_overrides(job['spec'], job['overrides'], log=lambda m: None)
            configure.validate(c, 1, check_data=False)
            got = dict(backbone=c.model.backbone, batch=c.batch_size, image_size=c.image_size, dtype=c.dtype)
            print(json.dumps(dict(part=job['part'], spec=job['spec'], **got)), flush=True)
        except Exception as e:  # noqa: BLE001  (reported, the next goes on)
            print(json.dumps(dict(part=job['part'], spec=job['spec'], error=f'{type(e).__name__}: {e}')), flush=True)


def worker_profile(job: dict) -> None:
    """One bench.bench of the job's config under jax.profiler.trace; prints the top ops as one JSON line."""
    import jax

    from ssljax import bench, configure

    config = configure.load_config_with_overrides(
        job['spec'], job['overrides'], log=lambda m: print(m, file=sys.stderr)
    )
    try:
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Python calls (tracing, compiling) would fill the trace's event limit
        jax.profiler.start_trace(job['trace_dir'], profiler_options=options)
    except (AttributeError, TypeError) as e:  # another jax version: the default options
        print(f'profiler options not set ({e}); tracing with the defaults', file=sys.stderr)
        jax.profiler.start_trace(job['trace_dir'])
    try:
        result = bench.bench(config, job['steps'])
    finally:
        jax.profiler.stop_trace()
    parsed = parse_trace(job['trace_dir'], executions_hint=job['steps'] + 2)  # bench.bench warms up with 2
    print(json.dumps(dict(bench=result, **parsed)), flush=True)


def _tiny_overrides(config) -> list[str]:
    backbone = 'vit_test' if config.model.backbone.startswith('vit') else 'resnet_tiny'
    return [f'model.backbone={backbone}', 'batch_size=8', 'image_size=16', 'augment.size=16', 'dtype=float32']


def worker_methods(job: dict) -> None:
    """bench.bench of every job method in one process, one JSON line each, while the deadline allows."""
    import gc

    import jax

    from ssljax import bench, configure

    def load(spec, overrides):
        return configure.load_config_with_overrides(spec, overrides, log=lambda m: print(m, file=sys.stderr))

    longest = 0.0
    for method in job['methods']:
        spec = f'configs/{method}.py:dataset=cifar10'
        if job['dry_run']:  # every config loads and validates; only a few are benched
            try:
                config = load(spec, [])
                overrides = _tiny_overrides(config)
                configure.validate(load(spec, overrides), 1, check_data=False)
            except Exception as e:  # noqa: BLE001  (recorded, the next method goes on)
                print(json.dumps(dict(method=method, error=f'{type(e).__name__}: {e}')), flush=True)
                continue
            if method not in job['bench_methods']:
                print(json.dumps(dict(method=method, validated=True)), flush=True)
                continue
        else:
            overrides = []
        left = job['deadline'] - time.time()
        if left < longest * 1.2 or left < 5:
            print(json.dumps(dict(method=method, skipped=f'{left:.0f} s left of the cap, {longest:.0f} s a method')))
            continue
        start = time.time()
        try:
            result = bench.bench(load(spec, overrides), job['steps'])
            print(json.dumps(dict(method=method, spec=spec, bench=result, wall_s=round(time.time() - start, 1))))
        except Exception as e:  # noqa: BLE001
            print(json.dumps(dict(method=method, spec=spec, error=f'{type(e).__name__}: {str(e)[:300]}')), flush=True)
        sys.stdout.flush()
        longest = max(longest, time.time() - start)
        jax.clear_caches()
        gc.collect()


# --------------------------------------------------------------------------------------------------------- parts


class Session:
    def __init__(self, args, rec: Recorder):
        self.args, self.rec = args, rec
        self.dry = args.dry_run
        self.work = args.work
        self.data_dir = os.path.join(self.work, 'cifar10-jpeg')
        self.state: dict = {}
        self.py = sys.executable
        self.cache_env = dict(JAX_COMPILATION_CACHE_DIR=os.path.join(self.work, 'jax_cache'))

    def remaining(self) -> float:
        return self.args.budget_s - self.rec.elapsed()

    # -- env ----------------------------------------------------------------------------------------------------
    def env(self, cap):
        from importlib import metadata

        packages = {}
        for name in (
            'jax',
            'jaxlib',
            'jax-cuda13-plugin',
            'jax-cuda12-plugin',
            'flax',
            'optax',
            'orbax-checkpoint',
            'chex',
            'numpy',
            'ml_collections',
            'dm-pix',
            'tensorboardX',
            'pillow',
        ):
            try:
                packages[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        gpu = None
        if shutil.which('nvidia-smi'):
            try:
                gpu = subprocess.run(
                    ['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
                    capture_output=True,
                    text=True,
                    timeout=min(cap, 20),
                ).stdout.strip()
            except (subprocess.TimeoutExpired, OSError) as e:
                gpu = f'nvidia-smi failed: {e}'
        commit = None
        try:
            commit = subprocess.run(
                ['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=ROOT, timeout=10
            ).stdout.strip()
        except (subprocess.TimeoutExpired, OSError):
            pass
        stamp = os.path.join(ROOT, '.data', 'commit.txt')  # written when .data was prepared (no .git travels)
        if not commit and os.path.exists(stamp):
            commit = open(stamp).read().strip() + ' (from .data/commit.txt)'
        self.rec.record(
            'env',
            'env',
            gpu=gpu,
            platform_guess=None if gpu else 'no nvidia-smi: CPU',
            python=sys.version.split()[0],
            packages=packages,
            commit=commit,
            cpus=os.cpu_count(),
            loadavg=[round(x, 2) for x in os.getloadavg()],
            reference=self.args.reference,
            reference_exists=os.path.exists(self.args.reference),
            packed_data=self.args.data,
            packed_exists=os.path.exists(os.path.join(self.args.data, 'train.npz')),
            plan={k: v for k, v in PLAN.items()},
            budget_s=self.args.budget_s,
            dry_run=self.dry,
        )

    # -- data ---------------------------------------------------------------------------------------------------
    def data(self, cap):
        packed = self.args.data
        start = time.time()
        limit = None
        if not os.path.exists(os.path.join(packed, 'train.npz')):
            if not self.dry:
                self.rec.record('data', 'skip', reason=f'no packed copy at {packed} (pack_cifar10_jpeg.py writes it)')
                return
            packed = os.path.join(self.work, 'packed_synthetic')
            synthetic_packed(packed)
            source = 'synthetic packed set (4 classes, 16 px random JPEGs)'
        else:
            source = packed
            if self.dry:
                limit = {'train': 8, 'test': 4}  # a few images per class of the real copy
        if os.path.exists(self.data_dir):
            shutil.rmtree(self.data_dir)
        counts = unpack(packed, self.data_dir, limit)
        self.state['data_ready'] = True
        if self.dry:
            self.check_gpu_configs(cap)
        self.rec.record(
            'data',
            'data',
            source=source,
            image_folder=self.data_dir,
            images=counts,
            seconds=round(time.time() - start, 1),
        )

    # -- step vs reference ----------------------------------------------------------------------------------------
    def _step(self, part, cap, shape, overrides, steps, with_reference):
        """One row: bench.bench at the shape, then bench.reference (anchor_jax.py in its own process, started by the
        same worker, as ``python -m ssljax.bench --reference`` does), each printed as soon as it is measured, so a
        reference that fails or runs out of time still leaves ssljax's number."""
        reference, note = None, None
        if with_reference is True:
            if os.path.exists(self.args.reference):
                reference = self.args.reference
            else:
                note = f'reference skipped: {self.args.reference} not found'
        else:
            note = f'reference skipped: {with_reference}'
        command = ' '.join(
            ['python -m ssljax.bench --config', CIFAR_SPEC, '--steps', str(steps)]
            + (['--reference', reference] if reference else [])
            + overrides
        )
        job = dict(
            spec=CIFAR_SPEC, overrides=[o[len('--config.') :] for o in overrides], steps=steps, reference=reference
        )
        cmd = [self.py, os.path.join(HERE, 'run_gpu.py'), '--worker', 'step', '--job', json.dumps(job)]
        # Two JAX processes share the GPU (ssljax's, then the reference it starts): each takes 45% of its memory.
        env = child_env(XLA_PYTHON_CLIENT_MEM_FRACTION='0.45', **self.cache_env)
        res = run_proc(cmd, cap, env=env)
        got = {}
        for line in res['lines']:
            if line.startswith('{'):
                try:
                    got.update(json.loads(line))
                except json.JSONDecodeError:
                    continue
        bench = got.get('bench')
        why = f'time cap {cap:.0f} s reached' if res['timed_out'] else f'exit {res["rc"]} (see run.log)'
        if bench is None:
            self.rec.record(part, 'cut' if res['timed_out'] else 'error', command=command, reason=why)
            return
        if reference and 'reference' in got:
            bench['reference_step_ms'] = got['reference']['step_ms']
            bench['ratio_to_reference'] = round(bench['step_ms'] / got['reference']['step_ms'], 3)
        elif reference:
            note = f'reference failed: {got.get("reference_error") or why}'
        self.rec.record(
            part,
            'step',
            shape=shape,
            bench=bench,
            reference=got.get('reference'),
            command=command,
            note=note,
            command_wall_s=res['wall_s'],
        )

    def step_r18(self, cap):
        if self.dry:
            self._step('step_r18', cap, 'ResNet-18 CIFAR stem, 2 x 2, 8 px, float32 (dry)', DRY_STEP, 1, True)
        else:
            self._step('step_r18', cap, 'ResNet-18 CIFAR stem, 2 x 256, 32 px, bf16', [], 40, True)

    def step_r50(self, cap):
        if self.dry:
            self._step(
                'step_r50',
                cap,
                'resnet_tiny, 2 x 2, 16 px, float32 (dry)',
                DRY_R50,
                1,
                'dry run: anchor_jax.py has only resnet18 and resnet50',
            )
        else:
            self._step('step_r50', cap, 'ResNet-50, 2 x 128, 224 px, bf16', R50_OVERRIDES, 20, True)

    # -- profile ------------------------------------------------------------------------------------------------
    def profile(self, cap):
        overrides = [o[len('--config.') :] for o in (DRY_STEP if self.dry else [])]
        trace_dir = os.path.join(self.work, 'trace')
        shutil.rmtree(trace_dir, ignore_errors=True)
        job = dict(spec=CIFAR_SPEC, overrides=overrides, steps=2 if self.dry else 5, trace_dir=trace_dir)
        cmd = [self.py, os.path.join(HERE, 'run_gpu.py'), '--worker', 'profile', '--job', json.dumps(job)]
        res = run_proc(cmd, cap, env=child_env(**self.cache_env))
        out = last_json(res['lines'])
        if res['timed_out'] or out is None:
            self.rec.record(
                'profile',
                'cut' if res['timed_out'] else 'error',
                rc=res['rc'],
                reason=f'{"time cap reached" if res["timed_out"] else "no result"} (rc {res["rc"]})',
            )
            return
        trace_file = out.pop('trace_file')
        size = os.path.getsize(trace_file)
        if size <= TRACE_MAX_BYTES:
            shutil.copy(trace_file, os.path.join(self.rec.out, 'profile.trace.json.gz'))
        self.rec.record(
            'profile',
            'top_ops',
            **out,
            trace_bytes=size,
            returned=size <= TRACE_MAX_BYTES,
            command_wall_s=res['wall_s'],
        )

    # -- training runs --------------------------------------------------------------------------------------------
    def train_overrides(self) -> list[str]:
        return [
            '--config.dataset=image_folder',
            f'--config.data_dir={self.data_dir}',
            # the decoded arrays, written by the first training run and read by the next (the speedrun)
            f'--config.cache_dir={os.path.join(self.work, "decoded")}',
        ]

    def gpu_configs(self) -> list[tuple[str, str, list[str]]]:
        """(part, config spec, overrides) of every command the GPU run starts, at its GPU settings."""
        return [
            ('step_r18', CIFAR_SPEC, []),
            ('step_r50', CIFAR_SPEC, R50_OVERRIDES),
            ('profile', CIFAR_SPEC, []),
            ('simclr_c10', CIFAR_SPEC, self.train_overrides() + C10_OVERRIDES),
            ('speedrun', speedrun_spec(12.3, 4), self.train_overrides()),
        ] + [('methods', f'configs/{m}.py:dataset=cifar10', []) for m in methods_available()]

    def check_gpu_configs(self, cap) -> None:
        """The dry run's check of the GPU settings it does not run: every GPU command's config loads and validates."""
        jobs = [
            dict(part=p, spec=spec, overrides=[o[len('--config.') :] for o in ov]) for p, spec, ov in self.gpu_configs()
        ]
        cmd = [self.py, os.path.join(HERE, 'run_gpu.py'), '--worker', 'check', '--job', json.dumps(jobs)]
        res = run_proc(cmd, cap, env=child_env())
        rows = [json.loads(line) for line in res['lines'] if line.startswith('{')]
        bad = [r for r in rows if 'error' in r]
        if res['rc'] != 0 or bad or len(rows) != len(jobs):
            self.rec.record('data', 'error', reason=f'GPU configs: {bad or res["rc"]}', checked=rows)
        else:
            self.rec.record('data', 'gpu_configs', checked=rows)

    def _train(self, part, cap, spec, overrides, workdir, metrics_name, on_rows=None):
        if not self.state.get('data_ready'):
            self.rec.record(part, 'skip', reason='no image folder (the data part was skipped or failed)')
            return None
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = (
            [
                self.py,
                '-m',
                'ssljax.main',
                '--config',
                spec,
                '--workdir',
                workdir,
            ]
            + self.train_overrides()
            + overrides
        )
        metrics = os.path.join(workdir, 'metrics.jsonl')
        start = time.time()
        seen = [0]

        def poll():
            if on_rows is None:
                return
            rows = read_jsonl(metrics)
            if len(rows) > seen[0]:
                on_rows(rows[seen[0] :], time.time() - start)
                seen[0] = len(rows)

        res = run_proc(cmd, cap, env=child_env(**self.cache_env), poll=poll)
        command = ' '.join(['python'] + cmd[1:])
        if os.path.exists(metrics):
            shutil.copy(metrics, os.path.join(self.rec.out, metrics_name))
        summary_path = os.path.join(workdir, 'summary.json')
        if res['rc'] == 0 and os.path.exists(summary_path):
            with open(summary_path) as f:
                summary = json.load(f)
            return dict(summary=summary, command=command, wall_s=res['wall_s'])
        rows = read_jsonl(metrics)
        last = rows[-1] if rows else {}
        self.rec.record(
            part,
            'cut' if res['timed_out'] else 'error',
            command=command,
            rc=res['rc'],
            reason=(
                f'time cap {cap:.0f} s reached at step {last.get("step")}'
                if res['timed_out']
                else f'exit {res["rc"]} (see run.log)'
            ),
            last_metrics=last,
        )
        return None

    def simclr_c10(self, cap):
        overrides = list(C10_OVERRIDES)
        if self.dry:
            overrides += DRY_TRAIN + [
                '--config.model.backbone=resnet_tiny',
                '--config.total_steps=3',
                '--config.evals.linear.epochs=2',
            ]
        out = self._train(
            'simclr_c10', cap, CIFAR_SPEC, overrides, os.path.join(self.work, 'simclr_c10'), 'simclr_c10_metrics.jsonl'
        )
        if out:
            self.state['c10'] = out
            self._record_summary('simclr_c10', out, solo_learn=SOLO_LEARN)

    def _record_summary(self, part, out, **extra):
        """One 'summary' line for a finished training run: its summary.json, command and wall time."""
        self.rec.record(
            part, 'summary', summary=out['summary'], command=out['command'], command_wall_s=out['wall_s'], **extra
        )

    # -- per-method table -----------------------------------------------------------------------------------------
    def methods(self, cap):
        methods = self.args.methods.split(',') if self.args.methods else methods_available()
        job = dict(
            methods=methods,
            steps=1 if self.dry else 20,
            deadline=time.time() + cap - 10,
            dry_run=self.dry,
            bench_methods=list(DRY_BENCH_METHODS),
        )
        cmd = [self.py, os.path.join(HERE, 'run_gpu.py'), '--worker', 'methods', '--job', json.dumps(job)]
        done = set()

        def on_line(line):
            if not line.startswith('{'):
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return
            done.add(row['method'])
            if 'bench' in row or 'error' in row:
                self.rec.record('methods', 'step', **row)
            if 'bench' in row:
                self.state.setdefault('method_rates', {})[row['method']] = row['bench']['samples_per_s']
            elif 'skipped' in row:
                self.rec.record('methods', 'skip', method=row['method'], reason=row['skipped'])
            elif row.get('validated'):
                self.state.setdefault('validated', []).append(row['method'])

        res = run_proc(cmd, cap, env=child_env(**self.cache_env), on_line=on_line)
        missing = [m for m in methods if m not in done]
        if missing:
            why = 'time cap' if res['timed_out'] else f'worker exit {res["rc"]}'
            kind = 'cut' if res['timed_out'] else 'error'
            self.rec.record('methods', kind, reason=f'not measured: {",".join(missing)} ({why})')
        if self.dry:
            self.rec.record('methods', 'validated', methods=self.state.get('validated', []))

    # -- speedrun -------------------------------------------------------------------------------------------------
    def speedrun_plan(self, cap) -> dict:
        c10 = self.state.get('c10')
        rates = self.state.get('method_rates', {})
        if c10 and c10['summary'].get('train_samples_per_s'):
            s = c10['summary']
            simclr_rate, rate_from = s['train_samples_per_s'], 'simclr_c10 training rate'
            overhead = max(20.0, c10['wall_s'] - s.get('train_s_this_run', 0) - s.get('eval_s', 0))
        else:
            simclr_rate, rate_from = 256 / 0.0085, 'guess: 1.2x the plain-Flax 7.1 ms step'
            overhead = 50.0
        if 'byol' in rates and 'simclr' in rates:
            factor, factor_from = rates['byol'] / rates['simclr'], 'methods table (byol / simclr samples/s)'
        else:
            factor, factor_from = 1 / 1.35, 'guess: BYOL step 1.35x SimCLR'
        rate = simclr_rate * factor
        eval_point_s = 4.0  # guess: encode 60,000 32 px images and score the kNN on one H100
        points = 4
        train_s = cap - overhead - 15.0 - (points + 1) * eval_point_s
        epochs = math.floor(train_s * rate / 50_000 * 10) / 10
        return dict(
            epochs=epochs,
            points=points,
            rate=round(rate, 1),
            rate_from=rate_from,
            factor=round(factor, 3),
            factor_from=factor_from,
            overhead_s=round(overhead, 1),
            train_s=round(train_s, 1),
        )

    def speedrun(self, cap):
        if self.dry:
            plan = dict(epochs=1, points=2)
            spec = 'configs/speedrun_cifar10.py:epochs=1,points=2,backbone=resnet_tiny,batch_size=16'
            overrides = [
                '--config.dtype=float32',
                '--config.evals.knn.k=10',
                '--config.eval.batch_size=64',
                '--config.evals.knn.every=1',
                '--config.evals.online_probe.every=1',
            ]  # curve points during the run, as on the GPU (the run's 2 steps: one at step 1, the final one at 2)
        else:
            plan = self.speedrun_plan(cap)
            if plan['epochs'] < 1:
                self.rec.record('speedrun', 'skip', reason=f'{cap:.0f} s left: under one epoch by the plan', plan=plan)
                return
            spec = speedrun_spec(plan['epochs'], plan['points'])
            overrides = []
        steps_per_epoch = [None]

        def on_rows(rows, since_start):
            for r in rows:
                knn = r.get('eval/knn_top1', r.get('final/knn_top1'))
                if knn is None:
                    continue
                probe = r.get('eval/online_probe_top1', r.get('final/online_probe_top1'))
                self.rec.record(
                    'speedrun',
                    'curve',
                    wall_s=round(since_start, 1),
                    step=r['step'],
                    epoch=None if not steps_per_epoch[0] else r['step'] / steps_per_epoch[0],
                    knn_top1=knn,
                    online_probe_top1=probe,
                    final='final/knn_top1' in r,
                )

        steps_per_epoch[0] = 50_000 // 512 if not self.dry else None
        out = self._train(
            'speedrun',
            cap,
            spec,
            overrides,
            os.path.join(self.work, 'speedrun'),
            'speedrun_metrics.jsonl',
            on_rows=on_rows,
        )
        if out:
            self._record_summary('speedrun', out, plan=plan)


# ---------------------------------------------------------------------------------------------------------- main


def caps(session: Session, part: str) -> float:
    left = session.remaining()
    cap = DRY_CAP_S if session.dry else PLAN[part]['cap_s']
    if part == 'methods' and not session.dry and left - SPEEDRUN_RESERVE_S >= 30:
        cap = min(cap, left - SPEEDRUN_RESERVE_S)
    return min(cap, left)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='experiments/gpu/run_gpu.py')
    parser.add_argument('--out')
    parser.add_argument('--dry-run', action='store_true')
    parser.add_argument('--budget-s', type=float, default=None)
    parser.add_argument('--parts', default=','.join(PLAN))
    parser.add_argument('--methods', default='', help='methods part: these method configs only (comma-separated)')
    parser.add_argument(
        '--reference',
        default=os.environ.get('SSLJAX_REFERENCE', ''),
        help='anchor_jax.py (default: $SSLJAX_REFERENCE, else .data/anchor_jax.py, else ../shared/bench/anchor_jax.py)',
    )
    parser.add_argument('--data', default=os.path.join(ROOT, '.data', 'cifar10'), help='the packed CIFAR-10 copy')
    parser.add_argument('--work', default='', help='scratch folder (default: /tmp/ssljax_gpu, or OUT/../work-*)')
    parser.add_argument('--worker', choices=('step', 'profile', 'methods', 'check'), help=argparse.SUPPRESS)
    parser.add_argument('--job', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        {'step': worker_step, 'profile': worker_profile, 'methods': worker_methods, 'check': worker_check}[args.worker](
            json.loads(args.job)
        )
        return 0
    if not args.out:
        parser.error('--out is required')
    parts = [p for p in args.parts.split(',') if p]
    unknown = [p for p in parts if p not in PLAN]
    if unknown:
        parser.error(f'unknown part(s) {unknown}; known: {",".join(PLAN)}')
    if not args.reference:
        candidates = [
            os.path.join(ROOT, '.data', 'anchor_jax.py'),
            os.path.join(os.path.dirname(ROOT), 'shared', 'bench', 'anchor_jax.py'),
        ]
        args.reference = next((c for c in candidates if os.path.exists(c)), candidates[0])
    if args.budget_s is None:
        args.budget_s = DRY_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S
    if not args.work:
        args.work = os.path.join(os.path.abspath(args.out) + '.work') if args.dry_run else '/tmp/ssljax_gpu'
    os.makedirs(args.work, exist_ok=True)
    t0 = float(os.environ.get('SSLJAX_GPU_T0', time.time()))
    header = dict(
        dry_run=args.dry_run,
        budget_s=args.budget_s,
        started_utc=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t0)),
        command=' '.join(['python', 'experiments/gpu/run_gpu.py'] + (argv if argv is not None else sys.argv[1:])),
    )
    rec = Recorder(args.out, t0, header)
    session = Session(args, rec)
    for part in PLAN:
        if part not in parts:
            continue
        cap = caps(session, part)
        # a part starts only with 60% of its estimate left at least (below that it would surely be cut, and a
        # cheaper later part may still fit)
        need = 1.0 if session.dry else (SPEEDRUN_MIN_S if part == 'speedrun' else 0.6 * PLAN[part]['estimate_s'])
        if cap < need:
            rec.record(
                part,
                'skip',
                reason=f'{session.remaining():.0f} s of the {args.budget_s:.0f} s budget left, '
                f'{need:.0f} s needed at least',
            )
            continue
        print(f'===== {part}: cap {cap:.0f} s ({session.remaining():.0f} s left)', flush=True)
        try:
            getattr(session, part)(cap)
        except Exception as e:  # noqa: BLE001  (recorded; the next part goes on)
            traceback.print_exc()
            rec.record(part, 'error', reason=f'{type(e).__name__}: {e}')
    rec.record('end', 'end', elapsed_s=round(rec.elapsed(), 1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
