"""Runs that survive their users: damaged checkpoints, workdir memory and lock, unreadable images, SIGINT/SIGTERM
agreed across processes, config ranges, strict JSON, one-line errors from the command line.

Every failure case asserts the one-line message and that nothing written earlier was lost.
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from ssljax import config_lib, configure, logging_lib
from ssljax import workdir as workdir_lib
from ssljax.data import sources as S


def _snapshot(root) -> dict:
    """{relative path: bytes} of every file under ``root``."""
    out = {}
    for path in glob.glob(os.path.join(str(root), '**'), recursive=True):
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _strict(text: str):
    """Parses JSON, refusing NaN / Infinity literals."""
    def refuse(name):
        raise ValueError(f'non-strict JSON constant {name}')
    return json.loads(text, parse_constant=refuse)


# =====================================================================================================================
# Checkpoints
# =====================================================================================================================
def _tree(step: int):
    import jax.numpy as jnp
    return {'w': jnp.arange(600, dtype=jnp.float32) + step, 'b': {'m': jnp.full((3, 4), float(step)),
                                                                   'step': jnp.int32(step)}}


def _write_steps(workdir, steps=(1, 2, 3), keep=3):
    from ssljax.checkpoint import Checkpointer
    ckpt = Checkpointer(str(workdir), keep=keep, async_save=False)
    for s in steps:
        ckpt.save(s, _tree(s))
    ckpt.close()
    return os.path.join(str(workdir), 'checkpoints')


def _largest_file(folder: str) -> str:
    files = [f for f in glob.glob(os.path.join(folder, '**'), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _truncate_array_file(step_dir):
    path = _largest_file(os.path.join(step_dir, 'default', 'ocdbt.process_0'))
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def _cut_metadata(step_dir):
    path = os.path.join(step_dir, 'default', '_METADATA')
    with open(path, 'r+b') as f:
        f.truncate(20)


DAMAGE = {
    'truncated array file': _truncate_array_file,
    'missing manifest': lambda d: os.remove(os.path.join(d, 'default', 'manifest.ocdbt')),
    'truncated metadata': _cut_metadata,
    'missing item folder': lambda d: shutil.rmtree(os.path.join(d, 'default')),
}


def _assert_tree(state, step):
    np.testing.assert_array_equal(np.asarray(state['w']), np.arange(600, dtype=np.float32) + step)
    np.testing.assert_array_equal(np.asarray(state['b']['m']), np.full((3, 4), float(step), np.float32))
    assert int(state['b']['step']) == step


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_with_one_line(tmp_path, capfd, damage):
    from ssljax.checkpoint import Checkpointer
    directory = _write_steps(tmp_path)
    step3 = os.path.join(directory, '3')
    DAMAGE[damage](step3)
    before = {s: _snapshot(os.path.join(directory, s)) for s in ('1', '2', '3')}
    capfd.readouterr()
    lines = []
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    step, state = ckpt.restore_latest(_tree(0), log=lines.append)
    assert step == 2
    _assert_tree(state, 2)
    assert len(lines) == 1, lines
    line = lines[0]
    assert 'step 3' in line and step3 in line and 'resuming from step 2' in line, line
    assert '\n' not in line and len(line) < 400 and 'tensorstore_spec' not in line and ' at 0x' not in line, line
    err = capfd.readouterr().err
    assert 'Traceback' not in err and 'TensorStore' not in err, err[-2000:]
    # Nothing deleted: the damaged step is kept, renamed, byte for byte; the others are untouched.
    assert sorted(os.listdir(directory)) == ['1', '2', '3.unreadable']
    assert _snapshot(step3 + '.unreadable') == before['3']
    assert _snapshot(os.path.join(directory, '1')) == before['1']
    assert _snapshot(os.path.join(directory, '2')) == before['2']
    # Training goes on from step 2 and saves step 3 again, which is then the one resumed from.
    ckpt.save(3, _tree(33))
    ckpt.close()
    again = Checkpointer(str(tmp_path), keep=3, async_save=False)
    step, state = again.restore_latest(_tree(0), log=lines.append)
    again.close()
    assert step == 3 and len(lines) == 1
    assert np.asarray(state['w'])[0] == 33


def test_missing_metadata_file_is_not_damage(tmp_path):
    """Orbax reads the arrays by the target's structure: a lost _METADATA file still restores the exact values."""
    from ssljax.checkpoint import Checkpointer
    directory = _write_steps(tmp_path)
    os.remove(os.path.join(directory, '3', 'default', '_METADATA'))
    lines = []
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    step, state = ckpt.restore_latest(_tree(0), log=lines.append)
    ckpt.close()
    assert step == 3 and not lines
    _assert_tree(state, 3)


def test_no_readable_checkpoint_is_one_clear_error_and_touches_nothing(tmp_path, capfd):
    from ssljax.checkpoint import Checkpointer, CheckpointError
    directory = _write_steps(tmp_path)
    for s in ('1', '2', '3'):
        _truncate_array_file(os.path.join(directory, s))
    before = _snapshot(directory)
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore_latest(_tree(0), log=lambda m: None)
    ckpt.close()
    message = str(info.value)
    assert '\n' not in message and 'no readable checkpoint' in message
    assert all(f'step {s} (' in message for s in (1, 2, 3)) and directory in message
    assert 'tensorstore_spec' not in message and 'Traceback' not in capfd.readouterr().err
    assert _snapshot(directory) == before


def test_checkpoints_stay_compatible_both_ways(tmp_path):
    """Written asynchronously by Checkpointer: load_tree reads them; written by a bare orbax manager: restorable."""
    import orbax.checkpoint as ocp

    from ssljax.checkpoint import Checkpointer, load_tree
    ckpt = Checkpointer(str(tmp_path / 'a'), keep=2)
    ckpt.save(5, _tree(5))
    ckpt.close()
    _assert_tree(load_tree(str(tmp_path / 'a'), 5), 5)
    bare = ocp.CheckpointManager(os.path.abspath(tmp_path / 'b' / 'checkpoints'),
                                 options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    bare.save(4, args=ocp.args.StandardSave(_tree(4)))
    bare.close()
    ckpt = Checkpointer(str(tmp_path / 'b'), keep=2, async_save=False)
    step, state = ckpt.restore_latest(_tree(0))
    ckpt.close()
    assert step == 4
    _assert_tree(state, 4)


def test_restore_latest_without_checkpoints(tmp_path):
    from ssljax.checkpoint import Checkpointer
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    assert ckpt.restore_latest(_tree(0)) == (None, None)
    ckpt.close()


def test_keep_zero_still_keeps_the_latest_checkpoint(tmp_path):
    from ssljax.checkpoint import Checkpointer, list_steps
    _write_steps(tmp_path, keep=0)
    assert list_steps(str(tmp_path)) == [3]
    ckpt = Checkpointer(str(tmp_path), keep=0, async_save=False)
    step, state = ckpt.restore_latest(_tree(0))
    ckpt.close()
    assert step == 3
    _assert_tree(state, 3)


# =====================================================================================================================
# Config ranges and suggestions
# =====================================================================================================================
def _config(name='simclr'):
    return config_lib.load_config(os.path.join(REPO, 'configs', f'{name}.py'))


def _set(c, key, value):
    node = c
    parts = key.split('.')
    for p in parts[:-1]:
        node = node[p]
    with node.unlocked():
        node[parts[-1]] = value


def _has(c, key) -> bool:
    return key in config_lib.all_keys(c)


@pytest.mark.parametrize('name, key, value', [
    ('simclr', 'optimizer.lr', -0.1),
    ('simclr', 'optimizer.lr', 0.0),
    ('simclr', 'total_steps', -1),
    ('simclr', 'epochs', -2.0),
    ('simclr', 'batch_size', -8),
    ('simclr', 'keep_checkpoints', 0),
    ('simclr', 'augment.size', 0),
    ('simclr', 'objective.temperature', 0.0),
    ('dino', 'objective.teacher_temp', -0.04),
    ('dino', 'objective.center_momentum', 1.0),
    ('simclr', 'optimizer.weight_decay', -1e-4),
    ('simclr', 'optimizer.momentum', 1.5),
    ('simclr', 'eval.batch_size', 0),
    ('simclr', 'evals.knn.k', 0),
    ('simclr', 'log_every', 0),
])
def test_out_of_range_values_name_the_key(name, key, value):
    c = _config(name)
    if not _has(c, key):
        pytest.skip(f'{key} is not a key of this config tree')
    _set(c, key, value)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.check_ranges(c)
    message = str(info.value)
    assert message.startswith(f'config key "{key}" must be') and '\n' not in message, message


def test_validate_ends_with_the_range_check():
    c = _config()
    c.keep_checkpoints = 0
    with pytest.raises(config_lib.ConfigError, match='config key "keep_checkpoints" must be >= 1, got 0'):
        configure.validate(c, num_devices=1)


@pytest.mark.parametrize('name', ['simclr', 'byol', 'simsiam', 'directpred', 'barlow_twins', 'vicreg', 'dino'])
def test_every_shipped_config_is_in_range(name):
    if not os.path.exists(os.path.join(REPO, 'configs', f'{name}.py')):
        pytest.skip(f'no configs/{name}.py')
    for variant in ('', ':dataset=cifar10'):
        config_lib.check_ranges(config_lib.load_config(os.path.join(REPO, 'configs', f'{name}.py') + variant))


@pytest.mark.parametrize('key, first', [
    ('optimizer.learning_rate', 'optimizer.lr'),
    ('learning_rate', 'optimizer.lr'),
    ('optimizer.lrr', 'optimizer.lr'),
    ('wd', 'optimizer.weight_decay'),
    ('objective.temp', 'objective.temperature'),
])
def test_unknown_key_suggestions_match_the_last_part(key, first):
    with pytest.raises(config_lib.ConfigError) as info:
        configure.apply_overrides(_config(), [f'{key}=0.1'])
    assert f"unknown config key '{key}'; did you mean {first}" in str(info.value), str(info.value)


# =====================================================================================================================
# Strict JSON and metrics
# =====================================================================================================================
def test_write_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / 'summary.json'
    path.write_text('{"old": 1}')
    payload = {'loss': float('nan'), 'up': float('inf'), 'x': np.float32(0.5), 'n': np.int64(3),
               'nested': {'v': [1.0, float('-inf')], 't': (1, 2)}}
    logging_lib.write_json(str(path), payload)
    data = _strict(path.read_text())
    assert data == {'loss': None, 'up': None, 'x': 0.5, 'n': 3, 'nested': {'v': [1.0, None], 't': [1, 2]}}
    assert os.listdir(tmp_path) == ['summary.json']


def test_metric_writer_drops_rows_after_the_resumed_step_and_writes_nan_as_null(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    rows = [{'step': s, 'train/loss': 1.0 / s} for s in (2, 4, 6, 8)]
    text = ''.join(json.dumps(r) + '\n' for r in rows)
    text = text.replace('"train/loss": 0.25', '"train/loss": NaN')  # an older version wrote NaN literals
    path.write_text(text + '{"step": 10, "train/lo')                 # and a kill -9 cut the last line
    logging_lib.MetricWriter(str(tmp_path)).close()                  # no start_step: the file is left alone
    assert path.read_text().endswith('"train/lo')
    writer = logging_lib.MetricWriter(str(tmp_path), start_step=4)
    writer.write(5, {'train/loss': float('nan'), 'train/lr': 0.1})
    writer.close()
    got = [_strict(line) for line in path.read_text().splitlines()]
    assert [r['step'] for r in got] == [2, 4, 5]
    assert got[0]['train/loss'] == 0.5 and got[1]['train/loss'] is None
    assert got[2] == {'step': 5, 'train/loss': None, 'train/lr': 0.1}


# =====================================================================================================================
# Workdir: config memory, lock, unusable folders
# =====================================================================================================================
def _config_dict(**changes):
    c = _config()
    for key, value in changes.items():
        _set(c, key, value)
    return c.to_dict()


def test_first_start_records_the_config_as_strict_json(tmp_path):
    wd = tmp_path / 'w'
    d = _config_dict()
    d['note'] = float('nan')
    assert workdir_lib.check_resume_config(str(wd), d, allow_changes=False) == {}
    stored = _strict((wd / 'config.json').read_text())
    assert stored['batch_size'] == d['batch_size'] and stored['note'] is None
    # The same config again, or one that changes only how often things are logged / evaluated / saved: accepted.
    assert workdir_lib.check_resume_config(str(wd), _config_dict(), allow_changes=False) == {}
    later = _config_dict(log_every=7, eval_every=3, checkpoint_every=11, keep_checkpoints=5)
    assert workdir_lib.check_resume_config(str(wd), later, allow_changes=False) == {}
    assert _strict((wd / 'config.json').read_text())['log_every'] == 7
    assert not (wd / 'config_history.jsonl').exists()


def test_changed_run_keys_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    wd = tmp_path / 'w'
    workdir_lib.check_resume_config(str(wd), _config_dict(), allow_changes=False)
    (wd / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 2.0}\n')
    before = _snapshot(wd)
    old_lr = _config().optimizer.lr
    new = _config_dict(batch_size=128, **{'optimizer.lr': 0.5, 'model.backbone': 'resnet18', 'log_every': 3})
    with pytest.raises(config_lib.ConfigError) as info:
        workdir_lib.check_resume_config(str(wd), new, allow_changes=False)
    message = str(info.value)
    assert '\n' not in message
    assert 'batch_size 256 -> 128' in message and f'optimizer.lr {old_lr} -> 0.5' in message, message
    assert 'model.backbone' in message and 'log_every' not in message
    assert workdir_lib.ALLOW_CHANGES_FLAG in message
    assert _snapshot(wd) == before
    # Allowed: recorded in config_history.jsonl (strict JSON), config.json now holds the new config.
    changes = workdir_lib.check_resume_config(str(wd), new, allow_changes=True)
    assert set(changes) == {'batch_size', 'optimizer.lr', 'model.backbone'}
    history = [_strict(line) for line in (wd / 'config_history.jsonl').read_text().splitlines()]
    assert len(history) == 1 and history[0]['changes']['batch_size'] == {'old': 256, 'new': 128}
    assert _strict((wd / 'config.json').read_text())['batch_size'] == 128
    assert (wd / 'metrics.jsonl').read_bytes() == before['metrics.jsonl']
    assert workdir_lib.check_resume_config(str(wd), new, allow_changes=False) == {}


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
    target = tmp_path / 'results.txt'
    target.write_text('keep me')
    with pytest.raises(workdir_lib.WorkdirError) as info:
        workdir_lib.check_workdir(str(target))
    assert str(info.value) == f'workdir {target} is a file, not a folder; pass another --workdir'
    assert target.read_text() == 'keep me'
    with pytest.raises(workdir_lib.WorkdirError, match='cannot create workdir'):
        workdir_lib.check_workdir(str(target / 'sub'))
    if os.geteuid() != 0:
        locked = tmp_path / 'ro'
        locked.mkdir()
        (locked / 'old.json').write_text('{}')
        locked.chmod(0o555)
        try:
            with pytest.raises(workdir_lib.WorkdirError, match=f'workdir {locked} is not writable'):
                workdir_lib.check_workdir(str(locked))
        finally:
            locked.chmod(0o755)
        assert sorted(os.listdir(locked)) == ['old.json']
    else:  # root writes through permissions: use a read-only kernel file system instead
        if os.access('/sys/kernel', os.W_OK) and os.path.isdir('/sys/kernel'):
            with pytest.raises(workdir_lib.WorkdirError, match='workdir /sys/kernel is not writable'):
                workdir_lib.check_workdir('/sys/kernel')


def test_command_line_workdir_errors_are_one_line(tmp_path, capsys):
    from ssljax import main as main_lib
    target = tmp_path / 'w.txt'
    target.write_text('keep me')
    code = main_lib.run(['--config=configs/simclr.py', f'--workdir={target}'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f'ssljax: error: workdir {target} is a file, not a folder; pass another --workdir'
    assert target.read_text() == 'keep me'


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces ssljax.train by a stub whose train_and_evaluate runs ``fake_train.action``."""
    import ssljax
    stub = types.ModuleType('ssljax.train')
    stub.calls = []

    def train_and_evaluate(config, workdir, **kwargs):
        stub.calls.append(kwargs)
        stub.action()

    stub.train_and_evaluate = train_and_evaluate
    stub.action = lambda: None
    monkeypatch.setitem(sys.modules, 'ssljax.train', stub)
    monkeypatch.setattr(ssljax, 'train', stub, raising=False)
    return stub


def test_keyboard_interrupt_is_one_line(tmp_path, capsys, fake_train):
    from ssljax import main as main_lib

    def interrupt():
        raise KeyboardInterrupt

    fake_train.action = interrupt
    (tmp_path / 'w').mkdir()
    (tmp_path / 'w' / 'metrics.jsonl').write_text('{"step": 1}\n')
    code = main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path / "w"}'])
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1 and err.startswith('ssljax: interrupted'), err
    assert (tmp_path / 'w' / 'metrics.jsonl').read_text() == '{"step": 1}\n'
    # --allow-config-changes reaches the train loop.
    fake_train.action = lambda: None
    assert main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path / "w"}', '--allow-config-changes']) == 0
    assert fake_train.calls[-1] == {'allow_config_changes': True}
    assert main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path / "w"}']) == 0
    assert fake_train.calls[-1] == {'allow_config_changes': False}


def test_other_errors_from_the_loop_stay_one_line(tmp_path, capsys, fake_train):
    from ssljax import main as main_lib

    def fail():
        raise workdir_lib.ConfigMismatchError('workdir w holds a run started with another config: seed 0 -> 1')

    fake_train.action = fail
    assert main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path}']) == 2
    assert capsys.readouterr().err == 'ssljax: error: workdir w holds a run started with another config: seed 0 -> 1\n'

    def oserror():
        raise PermissionError(13, 'Permission denied', str(tmp_path / 'summary.json'))

    fake_train.action = oserror
    assert main_lib.run(['--config=configs/simclr.py', f'--workdir={tmp_path}']) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'Permission denied' in err


def _write_lock(wd, pid, host):
    wd.mkdir(exist_ok=True)
    (wd / '.lock').write_text(json.dumps({'pid': pid, 'host': host, 'started': '2024-01-01T00:00:00+00:00'}))


def test_lock_is_written_and_released(tmp_path):
    wd = tmp_path / 'w'
    with workdir_lib.WorkdirLock(str(wd)):
        held = _strict((wd / '.lock').read_text())
        assert held['pid'] == os.getpid() and held['host'] == socket.gethostname()
    assert os.listdir(wd) == []


def test_lock_held_by_a_live_process_refuses_in_one_line(tmp_path):
    wd = tmp_path / 'w'
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        _write_lock(wd, other.pid, socket.gethostname())
        before = _snapshot(wd)
        with pytest.raises(workdir_lib.WorkdirError) as info:
            with workdir_lib.WorkdirLock(str(wd)):
                pass
        message = str(info.value)
        assert '\n' not in message and f'pid {other.pid} on host {socket.gethostname()}' in message, message
        assert _snapshot(wd) == before
    finally:
        other.kill()
        other.wait()


def test_lock_of_another_host_is_refused(tmp_path):
    wd = tmp_path / 'w'
    _write_lock(wd, 4242, 'elsewhere-node-7')
    with pytest.raises(workdir_lib.WorkdirError, match='in use by pid 4242 on host elsewhere-node-7.*delete .*\\.lock'):
        workdir_lib.WorkdirLock(str(wd)).acquire()
    assert _strict((wd / '.lock').read_text())['host'] == 'elsewhere-node-7'


@pytest.mark.parametrize('content', ['dead', 'garbled'])
def test_stale_lock_is_taken_over_with_one_warning(tmp_path, content):
    wd = tmp_path / 'w'
    if content == 'dead':
        gone = subprocess.Popen([sys.executable, '-c', 'pass'])
        gone.wait()
        _write_lock(wd, gone.pid, socket.gethostname())
    else:
        wd.mkdir()
        (wd / '.lock').write_text('{"pid": 12')
    (wd / 'summary.json').write_text('{}')
    warnings = []
    with workdir_lib.WorkdirLock(str(wd), warn=warnings.append):
        assert _strict((wd / '.lock').read_text())['pid'] == os.getpid()
    assert len(warnings) == 1 and '\n' not in warnings[0] and 'taking over' in warnings[0], warnings
    assert sorted(os.listdir(wd)) == ['summary.json']


# =====================================================================================================================
# Unreadable images
# =====================================================================================================================
def _png(path, value=90, size=(6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def _folder_with_problems(root):
    """train/a: 3 good, 1 random-bytes .jpg; train/b: 2 good, 1 truncated .png; train/c: empty."""
    for i in range(3):
        _png(root / 'train' / 'a' / f'{i}.png', 10 + i)
    for i in range(2):
        _png(root / 'train' / 'b' / f'{i}.png', 100 + i)
    noise = root / 'train' / 'a' / 'noise.jpg'
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    full = root / 'scratch.png'
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(full)
    cut = root / 'train' / 'b' / 'cut.png'
    cut.write_bytes(full.read_bytes()[:100])  # header and the start of the pixel data
    full.unlink()
    (root / 'train' / 'c').mkdir()
    (root / 'train' / 'c' / 'notes.txt').write_text('no images here')
    return noise, cut, root / 'train' / 'c'


def test_bad_images_error_lists_every_problem_in_one_line(tmp_path):
    noise, cut, empty = _folder_with_problems(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(S.BadImagesError) as info:
        S.load_split('image_folder', 'train', str(tmp_path), num_workers=1)
    message = str(info.value)
    assert '\n' not in message and message.startswith('2 unreadable files and 1 empty class folder'), message
    assert f'cannot decode image {noise}: not an image format PIL can identify' in message
    assert f'cannot decode image {cut}' in message and f'empty class folder {empty}' in message
    assert "bad_images='skip'" in message
    assert ' at 0x' not in message and 'BytesIO' not in message
    assert {p for p, _ in info.value.bad} == {str(noise), str(cut), str(empty)}
    assert _snapshot(tmp_path) == before


def test_bad_images_error_writes_the_full_list_when_it_has_a_place(tmp_path):
    root = tmp_path / 'data'
    _folder_with_problems(root)
    for i in range(3):
        (root / 'train' / 'b' / f'x{i}.jpg').write_bytes(b'not an image')
    report = tmp_path / 'w' / 'bad_images-train.txt'
    with pytest.raises(S.BadImagesError) as info:
        S.load_split('image_folder', 'train', str(root), bad_images_report=str(report))
    message = str(info.value)
    assert message.startswith('5 unreadable files and 1 empty class folder') and '\n' not in message
    assert 'and 3 more' in message and f'full list in {report}' in message, message
    listed = [line.split('\t') for line in report.read_text().splitlines()]
    assert len(listed) == 6 and all(len(x) == 2 and x[1] for x in listed)
    # With a cache_dir and no report path, the list goes next to the cache.
    with pytest.raises(S.BadImagesError, match='full list in .*image_folder-train-bad_images.txt'):
        S.load_split('image_folder', 'train', str(root), cache_dir=str(tmp_path / 'cache'))


def test_bad_images_skip_trains_on_the_rest_and_returns_the_list(tmp_path, capsys):
    noise, cut, empty = _folder_with_problems(tmp_path / 'data')
    root = tmp_path / 'data'
    _png(root / 'test' / 'a' / '0.png', 20)
    _png(root / 'test' / 'b' / '0.png', 120)
    (root / 'test' / 'c').mkdir(parents=True)
    split = S.load_split('image_folder', 'train', str(root), bad_images='skip')
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'leaving out 2 unreadable files and 1 empty class folder' in err
    assert split.class_names == ('a', 'b') and len(split) == 5
    np.testing.assert_array_equal(split.labels, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(split.images[:, 0, 0, 0], [10, 11, 12, 100, 101])
    assert {p for p, _ in split.bad_files} == {str(noise), str(cut), str(empty)}
    test = S.load_split('image_folder', 'test', str(root), bad_images='skip')
    assert test.class_names == ('a', 'b') and len(test) == 2
    assert test.bad_files == ((str(root / 'test' / 'c'), 'empty class folder: no image files'),)
    with pytest.raises(ValueError, match="bad_images must be 'error' or 'skip'"):
        S.load_split('image_folder', 'train', str(root), bad_images='ignore')


def test_cached_skip_still_reports_and_error_still_stops(tmp_path, monkeypatch, capsys):
    root, cache = tmp_path / 'data', tmp_path / 'cache'
    noise, _, empty = _folder_with_problems(root)
    shutil.rmtree(empty)  # (dropping an empty class changes the class list, hence the cache key)
    first = S.load_split('image_folder', 'train', str(root), cache_dir=str(cache), bad_images='skip')
    capsys.readouterr()

    def no_decoding(*a, **k):
        raise AssertionError('decoded although cached')

    monkeypatch.setattr(S.folders, 'decode_image', no_decoding)  # where FolderSource looks it up
    second = S.load_split('image_folder', 'train', str(root), cache_dir=str(cache), bad_images='skip')
    assert second.bad_files == first.bad_files and len(second) == len(first) == 5
    assert 'leaving out 2 unreadable files in' in capsys.readouterr().err
    with pytest.raises(S.BadImagesError, match=f'cannot decode image {noise}'):
        S.load_split('image_folder', 'train', str(root), cache_dir=str(cache), bad_images='error')


def test_decode_error_of_a_single_file_has_no_object_repr(tmp_path):
    bad = tmp_path / 'x.jpg'
    bad.write_bytes(b'\x00' * 50)
    with pytest.raises(S.UnreadableImageError) as info:
        S.decode_image(str(bad))
    assert str(info.value) == f'cannot decode image {bad}: not an image format PIL can identify'


# =====================================================================================================================
# SIGINT / SIGTERM
# =====================================================================================================================
def _wait_for(flag, timeout=5.0):
    deadline = time.time() + timeout
    while not flag.received and time.time() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_sets_the_flag_without_raising(sig, capfd):
    from ssljax.preemption import StopFlag
    previous = signal.getsignal(sig)
    flag = StopFlag()
    with flag:
        assert signal.getsignal(sig) == flag._handle
        assert not flag.should_stop(1)
        os.kill(os.getpid(), sig)  # no KeyboardInterrupt: the handler only records it
        _wait_for(flag)
        assert flag.received and flag.signal_name == sig.name
        assert flag.should_stop(2) and flag.stopped_by == sig.name
    assert signal.getsignal(sig) == previous
    err = capfd.readouterr().err
    assert err.count('\n') == 1 and f'ssljax: {sig.name} received' in err, err


def test_second_ctrl_c_stops_at_once():
    from ssljax.preemption import StopFlag
    previous = signal.getsignal(signal.SIGINT)
    flag = StopFlag(announce=False).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(flag)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        assert signal.getsignal(signal.SIGINT) == previous  # the second one also put the old handler back
    finally:
        flag.restore()


_AGREE = r'''
import os, signal, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from ssljax.preemption import StopFlag
with StopFlag(sync_every=5, announce=False) as flag:
    for step in range(1, 100):
        if jax.process_index() == 1 and step == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # only process 1 is preempted
        if flag.should_stop(step):
            print(f'STOP {step} {flag.stopped_by}', flush=True)
            break
    else:
        print('NO STOP', flush=True)
jax.distributed.shutdown()
'''


def test_two_processes_stop_at_the_same_step():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, '-c', _AGREE, f'localhost:{port}', str(i)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(out.strip().splitlines()[-1])
    assert outs == ['STOP 10 SIGTERM on process 1'] * 2, outs


def test_image_folder_takes_size_and_classes_from_the_data(tmp_path, monkeypatch):
    """A default (MNIST) config with --config.dataset=image_folder: the images' size and the folder's classes, not
    MNIST's 28 px and 10 classes; every view size follows; an explicit image_size wins."""
    import jax

    from ssljax import train
    init_state = train.init_state  # traced for its shapes, not compiled (nothing here reads a value of the state)
    monkeypatch.setattr(train, 'init_state', lambda exp, *a: jax.eval_shape(lambda: init_state(exp, *a)))
    for i, cls in enumerate(('ant', 'bee', 'cow')):
        for j in range(4):
            _png(tmp_path / 'data' / 'train' / cls / f'{j}.png', 40 * i + j, size=(12, 16))
            _png(tmp_path / 'data' / 'test' / cls / f'{j}.png', 40 * i + j, size=(12, 16))
    data = f'data_dir={tmp_path / "data"}'
    lines = []
    c = configure.load_config_with_overrides(f'{REPO}/configs/dino.py', ['dataset=image_folder', data], lines.append)
    assert (c.image_size, c.augment.size, c.num_classes) == (12, 12, 0)
    assert c.augment.views.local.size == 8  # DINO's local views: max(8, round(12 * 96 / 224)), from the new size
    assert lines == [f'image_size 12 from the median shorter side of the images in {tmp_path / "data" / "train"} '
                     f'(12 px) (set --config.image_size to choose another)']
    c = configure.load_config_with_overrides(f'{REPO}/configs/simclr.py',
                                              ['dataset=image_folder', data, 'image_size=10', 'num_classes=5'])
    assert (c.image_size, c.augment.size, c.num_classes) == (10, 28, 5)  # given keys are kept as given
    c = configure.load_config_with_overrides(f'{REPO}/configs/simclr.py', [
        'dataset=image_folder', data, 'model.backbone=resnet_tiny', 'batch_size=12', 'eval.max_train_examples=12'])
    run = train.setup(c, str(tmp_path / 'w'))
    assert run.exp.num_classes == 3 and run.eval_test.images.shape[1:] == (12, 12, 3)
    assert run.state.probe_params['kernel'].shape == (run.exp.feature_dim, 3)  # the online probe: 3 classes
    assert [v.size for v in run.exp.views] == [12, 12]
