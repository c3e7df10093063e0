"""Feedback during training: a progress line, metrics as JSONL and as TensorBoard event files (process 0 only)."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class MetricWriter:
    """Writes ``{step, name: value}`` rows to workdir/metrics.jsonl and TensorBoard (workdir/tb)."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self.tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
        from tensorboardX import SummaryWriter  # writes event files without TensorFlow
        self.tb = SummaryWriter(os.path.join(workdir, 'tb'))

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + '\n')
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, float(v), int(step))
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()


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
            print(f'step {step:>6d}/{self.total} | loss {metrics["loss"]:.4f} | {rate:8.1f} samples/s '
                  f'({rate / self.devices:.1f}/device) | ETA {eta_text} | {extras}', flush=True)
        return rate


def info(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stdout, flush=True)
