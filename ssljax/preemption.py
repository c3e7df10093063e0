"""Stopping a run cleanly on SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C): save, then stop.

``StopFlag`` replaces the SIGTERM and SIGINT handlers while the train loop runs (main thread only; elsewhere it
installs nothing and never fires). A signal only records itself; the loop asks ``should_stop(step)`` once per step
and, when it answers True, saves a checkpoint of ``step`` and stops. A second Ctrl-C raises KeyboardInterrupt at
once (stop without saving), as users expect from a program that seems stuck.

Several processes (``jax.process_count() > 1``) must stop at the same step, or the one that stops leaves the others
waiting in a collective forever. There ``should_stop`` agrees: every ``sync_every`` steps (steps divisible by it)
each process contributes its local flag to one ``multihost_utils.process_allgather`` of an int32, and all of them
stop if any was signalled. Between those steps it answers False without communicating, so the cost is one tiny
collective (and one wait for the queued steps) per ``sync_every`` steps; a signalled run goes on for at most
``sync_every - 1`` steps, which must fit within the scheduler's grace period. One process answers at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Records SIGTERM / SIGINT while installed; ``should_stop(step)`` says when to save and stop.

    Usable as a context manager (``with StopFlag() as stop:``), which installs on entry and restores on exit.
    """

    def __init__(self, sync_every: int = 10, announce: bool = True):
        if sync_every < 1:
            raise ValueError(f'sync_every must be >= 1, got {sync_every}')
        self.sync_every = sync_every
        self.announce = announce
        self.signal_name: str | None = None  # the first signal received here: 'SIGTERM' or 'SIGINT'
        self.stopped_by: str | None = None  # what stopped the run, once should_stop said so (names the process)
        self.interrupts = 0
        self._previous: dict = {}

    # ----- installing ---------------------------------------------------------------------------------------------
    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Puts back the handlers that were there before ``install``."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    # ----- the handler --------------------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                self.restore()
                raise KeyboardInterrupt('second Ctrl-C: stopped without saving')
        if self.signal_name is None:
            self.signal_name = name
            if self.announce:
                again = ' (Ctrl-C again stops at once, without saving)' if signum == signal.SIGINT else ''
                _write_stderr(f'ssljax: {name} received: saving a checkpoint and stopping{again}\n')

    @property
    def received(self) -> bool:
        """Whether this process got a signal (not agreed with the other processes)."""
        return self.signal_name is not None

    def __bool__(self) -> bool:
        return self.received

    # ----- the decision -------------------------------------------------------------------------------------------
    def should_stop(self, step: int) -> bool:
        """True when the run must save ``step`` and stop; the same answer at the same step on every process.

        Call it at every step on every process (it is a collective at steps divisible by ``sync_every`` when there
        are several processes). Once True, it stays True.
        """
        if self.stopped_by is not None:
            return True
        import jax

        if jax.process_count() == 1:
            if self.received:
                self.stopped_by = self.signal_name
            return self.stopped_by is not None
        if step % self.sync_every:
            return False
        import numpy as np
        from jax.experimental import multihost_utils

        local = signal.Signals[self.signal_name].value if self.received else 0
        codes = np.asarray(multihost_utils.process_allgather(np.asarray([local], np.int32))).reshape(-1)
        signalled = np.flatnonzero(codes)
        if signalled.size:
            first = int(signalled[0])
            self.stopped_by = f'{signal.Signals(int(codes[first])).name} on process {first}'
        return self.stopped_by is not None


def _write_stderr(text: str) -> None:
    try:  # os.write: safe inside a signal handler, unlike print on a buffered stream
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError, AttributeError):
        pass
