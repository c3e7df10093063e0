"""What a workdir remembers between starts: the config it was started with, and who is running in it.

``check_workdir(path)``: the workdir must be a writable folder (created if missing); else one-line WorkdirError.

``check_resume_config(workdir, config_dict, allow_changes)``: the first start writes ``workdir/config.json``. A later
start compares its config with the stored one over ``RUN_KEYS``, the keys that change what is trained (a resumed run
with another value would silently mix two experiments in one set of checkpoints and metrics):

    method, dataset, data_dir, train_split, image_size, num_classes, seed, batch_size, total_steps, epochs,
    dtype, model.*, augment.*, optimizer.*, objective.*, sampler.*, eval.online_probe_lr, stream (the host crops
    streamed views, the device crops resident ones: switching changes the batches)

Everything else may change from one start to the next: log_every, eval_every, checkpoint_every, keep_checkpoints,
cache_dir, device_data_max_mb, bad_images, distributed.*, evals.*, and the other eval.* settings. A difference
raises ConfigMismatchError (a ConfigError) in one line listing ``key old -> new``, before anything is written;
with ``allow_changes`` (``--allow-config-changes`` on the command line) the differences are appended to
``workdir/config_history.jsonl`` and the run goes on with the new config, which replaces config.json.

``WorkdirLock(workdir)``: one run per workdir. It writes ``workdir/.lock`` (pid, host, start time) and refuses to
start while a live process holds it; a lock left by a dead process of this host is taken over with a one-line
warning; a lock of another host cannot be checked and is refused (the message says how to remove it).
"""

from __future__ import annotations

import datetime
import errno
import fnmatch
import json
import os
import socket
import sys

from ssljax import config_lib, logging_lib

ALLOW_CHANGES_FLAG = '--allow-config-changes'

RUN_KEYS = (
    'method',
    'dataset',
    'data_dir',
    'train_split',
    'image_size',
    'num_classes',
    'seed',
    'batch_size',
    'total_steps',
    'epochs',
    'dtype',
    'model.*',
    'augment.*',
    'optimizer.*',
    'objective.*',
    'sampler.*',
    'eval.online_probe_lr',
    'stream',
)
_ABSENT = '(absent)'


class WorkdirError(RuntimeError):
    """The workdir cannot be used (a file, not writable, or in use by another run); one line."""


class ConfigMismatchError(config_lib.ConfigError):
    """The workdir's run was started with another config."""


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` if needed and checks that files can be written in it; -> its absolute path."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f'workdir {workdir} is a file, not a folder; pass another --workdir')
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f'cannot create workdir {workdir}: {e.strerror or e}') from None
    probe = os.path.join(path, f'.write-test-{socket.gethostname()}-{os.getpid()}')
    try:
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f'workdir {workdir} is not writable: {e.strerror or e}') from None
    return path


def _flatten(tree: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def is_run_key(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RUN_KEYS)


def config_changes(old: dict, new: dict) -> dict:
    """{key: (old, new)} over the run keys of two config dicts (nested), as JSON values; absent keys show as such."""
    old_flat, new_flat = _flatten(logging_lib.json_safe(old)), _flatten(logging_lib.json_safe(new))
    changes = {}
    for key in sorted(set(old_flat) | set(new_flat)):
        if not is_run_key(key):
            continue
        a, b = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if a != b:
            changes[key] = (a, b)
    return changes


def _short(value) -> str:
    text = json.dumps(value) if value != _ABSENT else value
    return text if len(text) <= 60 else text[:57] + '...'


def check_resume_config(workdir: str, config_dict: dict, allow_changes: bool = False) -> dict:
    """Compares ``config_dict`` with the config the workdir was started with; -> the changes allowed (maybe {}).

    The first start writes ``config.json``. Later starts: a change of a run key raises ConfigMismatchError (nothing
    written), unless ``allow_changes``, which records it in ``config_history.jsonl`` first. config.json always
    ends up holding the current config. Writes happen on process 0 only.
    """
    check_workdir(workdir)
    path = os.path.join(workdir, 'config.json')
    new = logging_lib.json_safe(config_dict)
    changes = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError('not a JSON object')
        except (OSError, ValueError) as e:
            if not allow_changes:
                raise ConfigMismatchError(
                    f'cannot read the config this workdir was started with ({path}: {e}); '
                    f'rerun with {ALLOW_CHANGES_FLAG} to replace it'
                ) from None
            old = None
        if old is not None:
            changes = config_changes(old, new)
        else:
            changes = {'config.json': ('unreadable', 'replaced')}
        if changes and not allow_changes:
            listing = ', '.join(f'{k} {_short(a)} -> {_short(b)}' for k, (a, b) in changes.items())
            raise ConfigMismatchError(
                f'workdir {workdir} holds a run started with another config: {listing}; '
                f'rerun with {ALLOW_CHANGES_FLAG} to continue it with the new values '
                f'(recorded in config_history.jsonl), or use another --workdir'
            )
        if changes:
            _append_history(os.path.join(workdir, 'config_history.jsonl'), changes)
    logging_lib.write_json(path, new)
    return changes


def _append_history(path: str, changes: dict) -> None:
    import jax

    if jax.process_index() != 0:
        return
    entry = {
        'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'changes': {
            k: {'old': None if a == _ABSENT else a, 'new': None if b == _ABSENT else b} for k, (a, b) in changes.items()
        },
    }
    with open(path, 'a') as f:
        f.write(logging_lib.dumps(entry, sort_keys=True) + '\n')
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------------------
# The lock.


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def _read_lock(path: str) -> dict | None:
    """The lock's content, {} when it is not readable JSON, None when there is no lock."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class WorkdirLock:
    """``with WorkdirLock(workdir): ...``: holds ``workdir/.lock`` while the run lasts (pid, host, start time).

    ``enabled=False`` makes it a no-op (pass ``jax.process_index() == 0`` so that only one process of a multi-host
    run holds it). ``warn`` receives the one-line warning when a stale lock is taken over (default: stderr).
    """

    def __init__(self, workdir: str, enabled: bool = True, warn=None):
        self.workdir = workdir
        self.path = os.path.join(workdir, '.lock')
        self.enabled = enabled
        self.warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self.info = None

    def __enter__(self) -> WorkdirLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.enabled:
            return
        check_workdir(self.workdir)
        host = socket.gethostname()
        self.info = {
            'pid': os.getpid(),
            'host': host,
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        }
        for _ in range(3):  # a lost race with another starter is retried, then reported
            if self._create():
                return
            held = _read_lock(self.path)
            if held is None:
                continue  # released in between
            pid, other = held.get('pid'), held.get('host')
            if not isinstance(pid, int) or not isinstance(other, str):
                self._take_over(held, f'unreadable lock file {self.path}')
                continue
            if other != host:
                raise WorkdirError(
                    f'workdir {self.workdir} is in use by pid {pid} on host {other} (since '
                    f'{held.get("started", "?")}); if that run is gone, delete {self.path}'
                )
            if pid != os.getpid() and _pid_alive(pid):
                raise WorkdirError(
                    f'workdir {self.workdir} is in use by pid {pid} on host {other} (since '
                    f'{held.get("started", "?")}); stop that run or use another --workdir'
                )
            why = 'no such process' if pid != os.getpid() else 'left by an earlier run in this process'
            self._take_over(held, f'stale lock of pid {pid} on host {other} ({why})')
        raise WorkdirError(f'could not take the lock {self.path}: another process keeps creating it')

    def _create(self) -> bool:
        """Creates the lock file with our content in one step; False when it exists already."""
        tmp = f'{self.path}.{socket.gethostname()}-{os.getpid()}'
        with open(tmp, 'w') as f:
            json.dump(self.info, f)
        try:
            os.link(tmp, self.path)  # atomic: fails when the lock exists, and never shows a half-written lock
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            try:  # file systems without hard links
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, 'w') as f:
                json.dump(self.info, f)
            return True
        finally:
            os.remove(tmp)

    def _take_over(self, held: dict, why: str) -> None:
        """Moves a stale lock aside (atomic rename), unless it changed since it was judged stale."""
        aside = f'{self.path}.stale-{socket.gethostname()}-{os.getpid()}'
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) != held:  # someone else's fresh lock: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            finally:
                os.remove(aside)
            return
        os.remove(aside)
        self.warn(f'ssljax: warning: {why}; taking over workdir {self.workdir}')

    def release(self) -> None:
        """Removes the lock if it is still ours."""
        if self.info is not None and _read_lock(self.path) == self.info:
            os.remove(self.path)
        self.info = None
