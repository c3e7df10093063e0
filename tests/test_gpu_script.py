"""experiments/gpu/run.sh (issue 22's prepared GPU session): its dry run end to end (slow), and its parts that need
no JAX: the time budget's skips, the packed-data reader, the trace parser, the carried-wheel choice."""

import gzip
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SH = os.path.join(REPO, 'experiments', 'gpu', 'run.sh')
SHARED = os.path.join(os.path.dirname(REPO), 'shared')
PACKER = os.path.join(SHARED, 'bench', 'pack_cifar10_jpeg.py')


def _load(name):
    path = os.path.join(REPO, 'experiments', 'gpu', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'ssljax_gpu_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _driver():
    return _load('run_gpu')


def _run(out, *args, timeout=60):
    env = dict(os.environ, PYTHON=sys.executable, SSLJAX_WHEELS=os.path.join(str(out) + '.nowheels'))
    return subprocess.run([RUN_SH, str(out), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO)


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, 'results.jsonl'))]


def _jpeg(value, size=8):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format='JPEG')
    return buf.getvalue()


def test_no_budget_left_skips_every_part_with_its_reason(tmp_path):
    out = tmp_path / 'out'
    res = _run(out, '--dry-run', '--budget-s', '0')
    assert res.returncode == 0, res.stderr + res.stdout
    rows = _rows(out)
    drv = _driver()
    assert [r['part'] for r in rows] == [*drv.PLAN, 'end']
    assert all(r['kind'] == 'skip' and 'budget left' in r['reason'] for r in rows[:-1])
    table = open(out / 'table.md').read()
    assert 'DRY RUN' in table and '| speedrun | skip |' in table
    assert os.path.exists(out / 'run.log')


def test_usage_errors():
    assert _run('--dry-run').returncode == 2  # no OUTDIR
    res = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'gpu', 'run_gpu.py'), '--out', '/tmp/x',
                          '--parts', 'nope'], capture_output=True, text=True)
    assert res.returncode == 2 and 'unknown part' in res.stderr


def test_unpack_restores_every_file_of_the_packed_format(tmp_path):
    drv = _driver()
    items = {'train': [(_jpeg(10 * i), i % 3) for i in range(7)], 'test': [(_jpeg(5 * i + 1), i % 3) for i in range(4)]}
    drv.write_packed(str(tmp_path / 'packed'), items, ['cat', 'dog', 'emu'])
    counts = drv.unpack(str(tmp_path / 'packed'), str(tmp_path / 'folder'))
    assert counts == {'train': 7, 'test': 4}
    for split, entries in items.items():
        for i, (blob, label) in enumerate(entries):
            path = tmp_path / 'folder' / split / ['cat', 'dog', 'emu'][label] / f'{i:05d}.jpg'
            assert path.read_bytes() == blob
    limited = drv.unpack(str(tmp_path / 'packed'), str(tmp_path / 'few'), {'train': 1, 'test': 1})
    assert limited == {'train': 3, 'test': 3}  # one per class of each split
    assert sorted(os.listdir(tmp_path / 'few' / 'train' / 'dog')) == ['00001.jpg']


@pytest.mark.skipif(not os.path.exists(PACKER), reason='../shared/bench/pack_cifar10_jpeg.py not present')
def test_unpack_reads_what_pack_cifar10_jpeg_writes(tmp_path):
    for split, n in (('train', 3), ('test', 2)):
        for name in ('b', 'a'):
            os.makedirs(tmp_path / 'src' / split / name)
            for i in range(n):
                (tmp_path / 'src' / split / name / f'{i}.jpg').write_bytes(_jpeg(40 * i + len(name) + n))
    subprocess.run([sys.executable, PACKER, str(tmp_path / 'src'), str(tmp_path / 'packed')], check=True,
                   capture_output=True)
    counts = _driver().unpack(str(tmp_path / 'packed'), str(tmp_path / 'folder'))
    assert counts == {'train': 6, 'test': 4}
    for split in ('train', 'test'):
        for name in ('a', 'b'):
            src = sorted((tmp_path / 'src' / split / name).iterdir())
            dst = sorted((tmp_path / 'folder' / split / name).iterdir())
            assert [p.read_bytes() for p in src] == [p.read_bytes() for p in dst]


def _gpu_like_trace(path):
    """Two executions of a train step (module 'jit_step_fn') and one of an init module, on a GPU's 'XLA Ops'
    thread, plus stream and host events the parser must leave out."""
    ev = [
        {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/host:CPU'}},
        {'ph': 'M', 'pid': 7, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
        {'ph': 'M', 'pid': 7, 'tid': 1, 'name': 'thread_name', 'args': {'name': 'XLA Modules'}},
        {'ph': 'M', 'pid': 7, 'tid': 2, 'name': 'thread_name', 'args': {'name': 'XLA Ops'}},
        {'ph': 'M', 'pid': 7, 'tid': 3, 'name': 'thread_name', 'args': {'name': 'Stream #13(Compute)'}},
        {'ph': 'X', 'pid': 1, 'tid': 9, 'ts': 0, 'dur': 1e6, 'name': 'PjitFunction(step_fn)'},
    ]
    for run in (11, 12):
        ev.append({'ph': 'X', 'pid': 7, 'tid': 1, 'ts': 0, 'dur': 700, 'name': 'jit_step_fn(123)'})
        for name, dur in (('convolution.3', 300), ('fusion.1', 100), ('fusion.1', 100), ('fusion.2', 50),
                          ('custom-call.4', 40), ('copy.5', 10), ('reduce.6', 5)):
            ev.append({'ph': 'X', 'pid': 7, 'tid': 2, 'ts': 0, 'dur': dur, 'name': name,
                       'args': {'hlo_op': name, 'hlo_module': 'jit_step_fn', 'run_id': str(run),
                                'long_name': f'{name} = f32[8] op()'}})
            ev.append({'ph': 'X', 'pid': 7, 'tid': 3, 'ts': 0, 'dur': dur, 'name': f'kernel_{name}'})
    ev.append({'ph': 'X', 'pid': 7, 'tid': 2, 'ts': 0, 'dur': 900, 'name': 'fusion.9',
               'args': {'hlo_op': 'fusion.9', 'hlo_module': 'jit_init_fn', 'run_id': '3'}})
    os.makedirs(os.path.dirname(path))
    with gzip.open(path, 'wt') as f:
        json.dump({'displayTimeUnit': 'ns', 'traceEvents': ev}, f)


def test_trace_parser_ranks_the_step_ops_by_device_time(tmp_path):
    _gpu_like_trace(str(tmp_path / 'plugins' / 'profile' / 'run1' / 'host.trace.json.gz'))
    got = _driver().parse_trace(str(tmp_path))
    assert got['source'] == 'device' and got['module'] == 'jit_step_fn' and got['executions'] == 2
    assert got['module_ms_per_execution'] == pytest.approx(0.605)  # 300 + 200 + 50 + 40 + 10 + 5 us
    assert [op['name'] for op in got['top']] == ['convolution.3', 'fusion.1', 'fusion.2', 'custom-call.4', 'copy.5']
    fusion = got['top'][1]
    assert fusion['ms_per_execution'] == pytest.approx(0.2) and fusion['count_per_execution'] == 2
    assert fusion['share'] == pytest.approx(200 / 605, abs=1e-4) and 'f32[8]' in fusion['detail']
    kinds = {k['kind']: k['ms_per_execution'] for k in got['top_kinds']}
    assert kinds['fusion'] == pytest.approx(0.25) and kinds['convolution'] == pytest.approx(0.3)


def test_carried_wheels_install_only_what_is_missing_or_out_of_range(tmp_path):
    wheels = _load('wheels')
    from importlib import metadata
    numpy_version = metadata.version('numpy')
    for name in ('numpy-1.0-py3-none-any.whl', 'pytest-1.0-py3-none-any.whl', 'not_installed_pkg-1.0-py3-none-any.whl'):
        (tmp_path / name).write_bytes(b'')
    (tmp_path / 'req.txt').write_text(f'numpy=={numpy_version}  # in range\npytest<1.0\n')
    got = {os.path.basename(p) for p in wheels.needed(str(tmp_path), str(tmp_path / 'req.txt'))}
    assert got == {'pytest-1.0-py3-none-any.whl', 'not_installed_pkg-1.0-py3-none-any.whl'}


def test_the_speedrun_plan_follows_the_measured_rates():
    drv = _driver()

    class Args:
        dry_run, work, budget_s = False, '/tmp', 530.0

    session = drv.Session.__new__(drv.Session)
    session.state = {}
    guess = session.speedrun_plan(200.0)
    assert guess['rate_from'].startswith('guess') and guess['factor_from'].startswith('guess')
    session.state = {'c10': {'summary': {'train_samples_per_s': 20000.0, 'train_s_this_run': 100.0, 'eval_s': 20.0},
                             'wall_s': 160.0},
                     'method_rates': {'simclr': 30000.0, 'byol': 20000.0}}
    plan = session.speedrun_plan(200.0)
    # overhead 160 - 100 - 20 = 40 s; 200 - 40 - 15 - 5 x 4 = 125 s of training at 20000 x 2/3 samples/s
    assert plan['overhead_s'] == 40.0 and plan['train_s'] == 125.0 and plan['factor'] == pytest.approx(0.667)
    assert plan['epochs'] == pytest.approx(np.floor(125 * 20000 * 2 / 3 / 50000 * 10) / 10)


@pytest.mark.slow  # the whole dry run: every part at tiny sizes on the CPU (a few minutes on 2 cores)
def test_the_dry_run_runs_every_part(tmp_path):
    out = tmp_path / 'out'
    res = _run(out, '--dry-run', timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = _rows(out)
    kinds = {(r['part'], r['kind']) for r in rows}
    assert not [r for r in rows if r['kind'] in ('error', 'cut', 'skip')], [r for r in rows if r['kind'] != 'step']
    for needed in [('env', 'env'), ('data', 'gpu_configs'), ('data', 'data'), ('step_r18', 'step'),
                   ('step_r50', 'step'), ('profile', 'top_ops'), ('simclr_c10', 'summary'), ('methods', 'step'),
                   ('methods', 'validated'), ('speedrun', 'curve'), ('speedrun', 'summary'), ('end', 'end')]:
        assert needed in kinds, needed
    by = {(r['part'], r['kind']): r for r in rows}
    assert by['step_r18', 'step']['bench']['step_ms'] > 0
    if os.path.exists(os.path.join(SHARED, 'bench', 'anchor_jax.py')):
        assert by['step_r18', 'step']['bench']['ratio_to_reference'] > 0
    else:
        assert 'reference skipped' in by['step_r18', 'step']['note']
    assert len(by['profile', 'top_ops']['top']) == 5
    checked = {(c['part'], c['spec']): c for c in by['data', 'gpu_configs']['checked']}  # the GPU settings, loaded
    assert checked['step_r50', 'configs/simclr.py:dataset=cifar10']['image_size'] == 224
    assert len([p for p, _ in checked if p == 'methods']) == len(_driver().methods_available())
    assert sorted(by['methods', 'validated']['methods'] + ['simclr', 'byol']) == sorted(_driver().methods_available())
    s = by['simclr_c10', 'summary']['summary']
    assert {'knn_top1', 'linear_top1', 'online_probe_top1', 'wall_s'} <= set(s)
    curve = [r for r in rows if r['part'] == 'speedrun' and r['kind'] == 'curve']
    assert len(curve) >= 2 and curve[-1]['final'] and all(a['wall_s'] <= b['wall_s'] for a, b in zip(curve, curve[1:]))
    # what comes back from the device: at most 8 files, plain names, nothing deeper than OUT's own files here
    files = os.listdir(out)
    assert len(files) <= 8 and all(re.fullmatch(r'[A-Za-z0-9._-]+', f) for f in files), files
    table = open(out / 'table.md').read()
    for heading in ('## 1.', 'Top five ops', '## 2.', 'Per-method step', '## 3.'):
        assert heading in table
    # after the session: the speedrun's summary.json and curve from the returned files
    res = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'gpu', 'report.py'), str(out),
                          '--speedrun-out', str(tmp_path / 'speedrun')], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.load(open(tmp_path / 'speedrun' / 'summary.json'))
    assert summary['finished'] and summary['dry_run'] and len(summary['curve']) == len(curve)
    assert os.path.getsize(tmp_path / 'speedrun' / 'curve.png') > 1000


def test_a_process_past_its_cap_is_stopped_and_its_output_kept():
    drv = _driver()
    start = time.time()
    res = drv.run_proc([sys.executable, '-c', 'import time; print("{\\"a\\": 1}", flush=True); time.sleep(60)'],
                       timeout_s=1.0)
    assert res['timed_out'] and res['lines'] == ['{"a": 1}'] and drv.last_json(res['lines']) == {'a': 1}
    # one that ignores SIGTERM is killed after the grace period
    ignore = ('import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("up", flush=True); '
              'time.sleep(60)')
    res = drv.run_proc([sys.executable, '-c', ignore], timeout_s=1.0, grace_s=1.0)
    assert res['timed_out'] and res['rc'] == -9 and res['lines'] == ['up']
    assert time.time() - start < 20


def test_the_methods_worker_skips_what_its_deadline_leaves_no_time_for():
    job = dict(methods=['simclr', 'byol'], steps=1, deadline=0, dry_run=True, bench_methods=['simclr', 'byol'])
    res = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'gpu', 'run_gpu.py'), '--worker', 'methods',
                          '--job', json.dumps(job)], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{')]
    assert [r['method'] for r in rows] == ['simclr', 'byol'] and all('s left of the cap' in r['skipped'] for r in rows)


def test_trace_parser_without_an_ops_thread_counts_module_executions(tmp_path):
    """Kernel events on a stream thread carrying hlo_op / hlo_module (no 'XLA Ops' thread, no run_id): executions
    come from the 'XLA Modules' thread, else from the hint (the steps the worker ran)."""
    ev = [{'ph': 'M', 'pid': 7, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
          {'ph': 'M', 'pid': 7, 'tid': 1, 'name': 'thread_name', 'args': {'name': 'XLA Modules'}},
          {'ph': 'M', 'pid': 7, 'tid': 3, 'name': 'thread_name', 'args': {'name': 'Stream #13(Compute)'}}]
    for _ in range(3):
        ev.append({'ph': 'X', 'pid': 7, 'tid': 1, 'ts': 0, 'dur': 99, 'name': 'jit_step_fn(5)'})
        for name, dur in (('conv.1', 30), ('conv.1', 30), ('fusion.2', 20)):
            ev.append({'ph': 'X', 'pid': 7, 'tid': 3, 'ts': 0, 'dur': dur, 'name': f'sm90_kernel_{name}',
                       'args': {'hlo_op': name, 'hlo_module': 'jit_step_fn'}})
    path = tmp_path / 'a' / 'plugins' / 'profile' / 'r' / 'h.trace.json.gz'
    os.makedirs(path.parent)
    with gzip.open(path, 'wt') as f:
        json.dump({'traceEvents': ev}, f)
    got = _driver().parse_trace(str(tmp_path / 'a'))
    assert got['executions'] == 3 and got['executions_from'] == 'XLA Modules events'
    assert got['top'][0] == dict(name='conv.1', ms_per_execution=0.06, share=0.75, count_per_execution=2.0,
                                 detail='sm90_kernel_conv.1')
    with gzip.open(path, 'wt') as f:
        json.dump({'traceEvents': [e for e in ev if e.get('tid') != 1 or e['ph'] == 'M']}, f)
    got = _driver().parse_trace(str(tmp_path / 'a'), executions_hint=3)
    assert got['executions'] == 3 and got['top'][1]['ms_per_execution'] == 0.02
