"""Feedback during training: a progress line, metrics as JSONL and as TensorBoard event files (process 0 only).

Every JSON file ssljax writes is strict JSON (``allow_nan=False``): NaN and infinities become ``null``, so any JSON
parser reads them. ``write_json`` is the one way to write a JSON file into a workdir (atomic, process 0 only).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np


def json_safe(value):
    """``value`` with NaN/inf floats as None, numpy scalars/arrays as Python values, tuples as lists (recursively)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.generic, jax.Array)) and np.ndim(value) == 0:
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(payload, **kwargs) -> str:
    """Strict JSON text of ``payload`` (NaN/inf -> null)."""
    return json.dumps(json_safe(payload), allow_nan=False, **kwargs)


def write_json(path: str, payload) -> None:
    """Writes ``payload`` as strict JSON to ``path`` atomically (temporary file, fsync, rename); process 0 only."""
    if jax.process_index() != 0:
        return
    text = dumps(payload, indent=2, sort_keys=True) + '\n'
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class MetricWriter:
    """Writes ``{step, name: value}`` rows to workdir/metrics.jsonl and TensorBoard (workdir/tb).

    ``start_step``: the step the run starts (or resumes) from. Rows of a later step, left by an attempt that went
    further than its last checkpoint, are dropped once here (the file is rewritten atomically), so that after a
    resume every step appears once. Rows that are not valid JSON (a line cut by a kill) are dropped too. None (the
    default) leaves the file as it is. Non-finite values are written as null.
    """

    def __init__(self, workdir: str, start_step: int | None = None):
        self.active = jax.process_index() == 0
        self.tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, 'metrics.jsonl')
        if start_step is not None:
            truncate_metrics(self.path, start_step)
        self.jsonl = open(self.path, 'a')
        from tensorboardX import SummaryWriter  # writes event files without TensorFlow

        self.tb = SummaryWriter(os.path.join(workdir, 'tb'))

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(dumps(row) + '\n')
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, float(v), int(step))
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()


def truncate_metrics(path: str, start_step: int) -> int:
    """Rewrites the JSONL file ``path`` without rows of step > ``start_step`` (and unparsable lines), NaN as null.

    Returns the number of lines dropped; the file is untouched when every line stays as it was.
    """
    if not os.path.exists(path):
        return 0
    kept, dropped, changed = [], 0, False
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)  # accepts the NaN literals older versions wrote
            except ValueError:
                dropped += 1
                continue
            if isinstance(row, dict) and isinstance(row.get('step'), (int, float)) and row['step'] > start_step:
                dropped += 1
                continue
            kept.append(dumps(row))
            changed = changed or kept[-1] != line.strip()
    if dropped or changed:
        tmp = f'{path}.tmp-{os.getpid()}'
        with open(tmp, 'w') as f:
            f.write(''.join(k + '\n' for k in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


class Progress:
    """One line per logging interval: step, loss, samples/s (global and per device), ETA."""

    def __init__(self, total_steps: int, global_batch: int, num_devices: int, start_step: int):
        self.total, self.batch, self.devices = total_steps, global_batch, num_devices
        self.last_step, self.last_time = start_step, None

    def start(self, step: int) -> None:
        """Call once the first (compiling) step has finished: rates are measured from here."""
        self.last_step, self.last_time = step, time.time()

    def update(self, step: int, metrics: dict) -> float:
        """Prints the line; returns samples/s over the interval since the last call."""
        now = time.time()
        rate = 0.0
        if self.last_time is not None and step > self.last_step:
            rate = (step - self.last_step) * self.batch / (now - self.last_time)
        eta = (self.total - step) * self.batch / rate if rate else float('nan')
        self.last_step, self.last_time = step, now
        if jax.process_index() == 0:
            extras = ' | '.join(f'{k} {v:.4g}' for k, v in metrics.items() if k != 'loss')
            eta_text = _format_duration(eta) if np.isfinite(eta) else '?'
            print(
                f'step {step:>6d}/{self.total} | loss {metrics["loss"]:.4f} | {rate:8.1f} samples/s '
                f'({rate / self.devices:.1f}/device) | ETA {eta_text} | {extras}',
                flush=True,
            )
        return rate


def info(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stdout, flush=True)
