"""The train loop end to end: summary, resume after kill -9, NaN handling, bad input through the command line."""
import dataclasses
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, tiny_config

from ssljax import checkpoint as ckpt_lib
from ssljax import main as main_lib
from ssljax import train
from ssljax.objectives import base, simclr

SUMMARY_KEYS = ('method', 'dataset', 'backbone', 'steps', 'global_batch', 'devices', 'wall_s', 'train_samples_per_s',
                'final_loss', 'knn_top1', 'linear_top1', 'random_init_knn_top1', 'random_init_linear_top1')


@pytest.mark.parametrize('method', ['simclr', 'byol'])
def test_train_and_evaluate_writes_summary_metrics_and_checkpoints(tmp_path, method):
    config = tiny_config(method, **{'eval.random_init_baseline': True, 'eval_every': 2})
    config.evals = ml_collections.ConfigDict({k: config.evals[k] for k in ('knn', 'linear')})  # the summary's keys
    summary = train.train_and_evaluate(config, str(tmp_path))
    on_disk = json.load(open(tmp_path / 'summary.json'))
    assert on_disk == json.loads(json.dumps(summary))
    for key in SUMMARY_KEYS:
        assert key in summary and summary[key] is not None, key
    assert summary['steps'] == 4 and summary['method'] == method and np.isfinite(summary['final_loss'])
    assert 0.0 <= summary["knn_top1"] <= 1.0 and 0.0 <= summary["linear_top1"] <= 1.0
    rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert [r['step'] for r in rows if 'train/loss' in r] == [2, 4]
    assert any('eval/knn_top1' in r for r in rows)
    assert glob.glob(str(tmp_path / 'tb' / 'events.out.tfevents.*'))
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def restore_params(workdir, step):
    return ckpt_lib.load_tree(workdir, step)


def run_main(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, '-m', 'ssljax.main', *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


TINY_ARGS = ['--config.dataset=digits', '--config.model.backbone=resnet_tiny', '--config.image_size=8',
             '--config.augment.size=8', '--config.augment.blur_prob=0.0', '--config.batch_size=16',
             '--config.total_steps=4', '--config.log_every=1', '--config.checkpoint_every=2',
             '--config.evals.linear.epochs=1', '--config.eval.max_train_examples=128',
             '--config.eval.random_init_baseline=false']


KILL_AFTER_CHECKPOINT = r"""
import os, signal, sys
from ssljax import config_lib, configure, main, train


class Kill(train.Hook):  # test-only fault injection, from outside the loop
    def after_checkpoint(self, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGKILL)


args, overrides = main.parse_args(sys.argv[1:])
config = configure.apply_overrides(config_lib.load_config(args.config), overrides)
train.train_and_evaluate(config, args.workdir, hooks=[Kill()])
"""


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
@pytest.mark.parametrize('method', ['byol'])
def test_resume_after_kill_matches_uninterrupted(tmp_path, method):
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    config = [f'--config=configs/{method}.py']
    r = run_main([*config, f'--workdir={straight}', *TINY_ARGS])
    assert r.returncode == 0, r.stderr
    killed = subprocess.run([sys.executable, '-c', KILL_AFTER_CHECKPOINT, *config, f'--workdir={resumed}', *TINY_ARGS],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert killed.returncode == -9, killed.stderr  # SIGKILL right after step 2's checkpoint
    assert os.listdir(os.path.join(resumed, 'checkpoints')) == ['2']
    r = run_main([*config, f'--workdir={resumed}', *TINY_ARGS])
    assert r.returncode == 0, r.stderr
    assert 'resumed from' in r.stdout
    a, b = restore_params(straight, 4), restore_params(resumed, 4)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert int(a['step']) == 4


@base.register
@dataclasses.dataclass(frozen=True)
class NaNAfterTwo(simclr.SimCLR):
    """SimCLR whose loss turns NaN from step 3 on (it counts steps in its state)."""
    name = 'test_nan_after_two'

    def init(self, rng, encoder_variables):
        heads, _ = super().init(rng, encoder_variables)
        return heads, {'count': jnp.zeros([], jnp.int32)}

    def loss(self, variables, objective_state, views, batch, rng):
        loss, out = super().loss(variables, objective_state, views, batch, rng)
        count = objective_state['count'] + 1
        loss = jnp.where(count >= 3, jnp.nan, loss)
        return loss, out.replace(objective_state={'count': count})


def test_nan_loss_stops_with_one_line_and_keeps_checkpoints(tmp_path, capsys):
    config = tiny_config('simclr', method='test_nan_after_two', total_steps=6, log_every=1)
    with pytest.raises(train.NonFiniteLossError, match='NaN/inf at step 2.*checkpoints up to step 2 are kept'):
        train.train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / 'checkpoints') == ['2']
    params = restore_params(str(tmp_path), 2)['params']
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('extra, message', [
    (['--config.method=simclrr'], "unknown method 'simclrr'"),
    (['--config.model.backbone=resnet7'], "unknown backbone 'resnet7'"),
    (['--config.dataset=cifar11'], "unknown dataset 'cifar11'"),
    (['--config.batch_size=sixteen'], "config key 'batch_size' expects an int"),
    (['--config.optimizer.nme=sgd'], "unknown config key 'optimizer.nme'"),
    (['--config.dataset=image_folder', '--config.data_dir=/nonexistent/x'], "data_dir '/nonexistent/x' does not exist"),
])
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, capsys, extra, message):
    code = main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path}', *TINY_ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith('ssljax: error:') and message in err, err


def test_empty_image_folder_is_an_error(tmp_path, capsys):
    root = tmp_path / 'data'
    (root / 'train' / 'cat').mkdir(parents=True)
    (root / 'test' / 'cat').mkdir(parents=True)
    code = main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path / "w"}', *TINY_ARGS,
                         '--config.dataset=image_folder', f'--config.data_dir={root}'])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and str(root / 'train') in err, err


def test_streamed_dataset_trains_from_host_and_evaluates_a_subsample(tmp_path, monkeypatch, capsys):
    from ssljax.data import pipeline
    monkeypatch.setattr(pipeline, 'STREAMED', ('digits',))  # as imagenet2012: host loader, subsampled evaluation
    config = tiny_config('simclr', **{'eval.max_train_examples': 0})
    with pytest.raises(ValueError, match='eval.max_train_examples'):
        pipeline.load_split(config, 'train')  # a whole streamed split is never read into memory
    config.eval.max_train_examples = 200
    # Features of lazily read blocks (knn) and rows indexed in the lazy test split (diagnostics' two views); the other
    # evaluators read the same features as knn.
    config.evals = ml_collections.ConfigDict({k: config.evals[k] for k in ('knn', 'diagnostics')})
    summary = train.train_and_evaluate(config, str(tmp_path / 'b'))
    assert 'streamed from host' in capsys.readouterr().out
    assert summary['steps'] == 4 and np.isfinite(summary['final_loss'])
    assert 0.0 <= summary['knn_top1'] <= 1.0 and np.isfinite(summary['diagnostics_alignment'])


def _tiny_run(workdir, *extra):
    return run_main(['--config=configs/simclr.py', f'--workdir={workdir}', *TINY_ARGS, *extra])


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_resume_with_a_changed_batch_is_refused_and_nothing_is_lost(tmp_path):
    workdir = tmp_path / 'w'
    r = _tiny_run(workdir)
    assert r.returncode == 0, r.stderr
    before = {p: open(workdir / p, 'rb').read() for p in ('config.json', 'summary.json', 'metrics.jsonl')}
    steps = sorted(os.listdir(workdir / 'checkpoints'))
    r = _tiny_run(workdir, '--config.batch_size=32')
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and 'batch_size' in err[0] and '16 -> 32' in err[0], r.stderr
    assert {p: open(workdir / p, 'rb').read() for p in before} == before
    assert sorted(os.listdir(workdir / 'checkpoints')) == steps
    # Rerunning the finished run unchanged trains nothing and writes strict JSON (no NaN) again.
    r = _tiny_run(workdir)
    assert r.returncode == 0, r.stderr
    summary = json.loads(open(workdir / 'summary.json').read(), parse_constant=lambda c: pytest.fail(c))
    assert summary['steps'] == 4 and summary['knn_top1'] is not None
    rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
    train_steps = [row['step'] for row in rows if 'train/loss' in row]
    assert train_steps == sorted(set(train_steps)), train_steps  # no duplicated step rows


def test_second_run_on_a_locked_workdir_is_refused(tmp_path):
    import socket
    workdir = tmp_path / 'w'
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (workdir / '.lock').write_text(json.dumps({'pid': holder.pid, 'host': socket.gethostname(),
                                                   'started': 'now'}))
        r = _tiny_run(workdir)
    finally:
        holder.kill()
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and f'in use by pid {holder.pid}' in err[0], r.stderr
    assert not (workdir / 'checkpoints').exists()


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    workdir = tmp_path / 'w'
    args = [a for a in TINY_ARGS if not a.startswith('--config.total_steps')]
    r = _tiny_run(workdir, *args, '--config.total_steps=4')
    assert r.returncode == 0, r.stderr
    arrays = [os.path.join(d, f) for d, _, fs in os.walk(workdir / 'checkpoints' / '4') for f in fs
              if os.path.getsize(os.path.join(d, f)) > 1000]
    with open(max(arrays, key=os.path.getsize), 'r+b') as f:
        f.truncate(100)  # a truncated array file in the newest checkpoint
    r = _tiny_run(workdir, *args, '--config.total_steps=4')
    assert r.returncode == 0, r.stderr
    assert 'resumed from' in r.stdout and 'at step 2' in r.stdout
    damaged = [line for line in (r.stdout + r.stderr).splitlines() if 'step 4' in line and 'unreadable' in line]
    assert len(damaged) == 1, r.stdout + r.stderr
    assert os.path.isdir(workdir / 'checkpoints' / '4.unreadable')  # set aside, not deleted
    assert '4' in os.listdir(workdir / 'checkpoints')  # trained again from step 2 and saved


@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGINT'])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_with_one_line(tmp_path, signame):
    import signal
    import time
    workdir = tmp_path / 'w'
    args = [a for a in TINY_ARGS if not a.startswith('--config.total_steps')]
    proc = subprocess.Popen([sys.executable, '-m', 'ssljax.main', '--config=configs/simclr.py', f'--workdir={workdir}',
                             *args, '--config.total_steps=100000', '--config.checkpoint_every=0'],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    metrics = workdir / 'metrics.jsonl'  # created before the handlers are installed; its first row comes after
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.5)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f'ssljax: error: stopped by {signame} at step'), line
    step = int(line.split('at step ')[1].split(';')[0])
    assert os.listdir(workdir / 'checkpoints') == [str(step)]
