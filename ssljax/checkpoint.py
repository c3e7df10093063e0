"""Checkpoints through orbax's CheckpointManager: save every N steps, keep the last K, resume from the workdir.

The whole train state is one pytree (step, params, batch statistics, optimizer state, objective state, probe, rng),
and the data position is a pure function of (seed, step), so restoring the pytree resumes the run exactly.
Orbax finalises a checkpoint by an atomic rename, so a process killed mid-save leaves the earlier ones intact.

A finished checkpoint can still be damaged later (a truncated array file, a lost manifest or metadata file, a disk
that filled up). ``Checkpointer.restore_latest`` tries the newest step and falls back to the next newest readable one,
logging one line per damaged step. Nothing is ever deleted by it: a damaged step newer than the one resumed from is
renamed ``<step>.unreadable`` next to the others (orbax ignores that name), because orbax would otherwise skip every
save up to that step (``should_save`` refuses steps <= the latest) and then refuse to overwrite it.

Parameter layouts: a checkpoint stores the state in the layout the model had when it was saved (a ViT with
``model.scan`` keeps its blocks stacked under ``blocks``, otherwise as ``block1 .. blockN``). A restore into a state
of the other layout converts: when the plain restore fails, every layout converter registered with
:func:`register_layout` (the models layer registers the ViT's on import; this module imports no model) is tried:
the checkpoint is read in the target's other layout and converted back, then placed with the target's shardings.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

UNREADABLE_SUFFIX = '.unreadable'

# (layout_of(tree) -> a hashable layout or None when the tree has no such part, convert(tree, layout) -> tree).
_LAYOUTS: list[tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]] = []


def register_layout(layout_of: Callable[[Any], Any], convert: Callable[[Any, Any], Any]) -> None:
    """Registers a two-layout converter (e.g. scanned <-> unrolled ViT blocks) that restores may use.

    ``layout_of(tree)`` is True / False for the two layouts (None: the tree has neither); ``convert(tree, layout)``
    returns ``tree`` in that layout, for concrete arrays and for ``jax.ShapeDtypeStruct`` leaves alike.
    """
    if (layout_of, convert) not in _LAYOUTS:
        _LAYOUTS.append((layout_of, convert))


class CheckpointError(RuntimeError):
    """No checkpoint of the workdir can be read; the message lists every step and why, in one line."""


class Checkpointer:
    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
        # At least one checkpoint is always kept: orbax's max_to_keep=0 would delete each one right after saving it.
        self.keep = max(1, int(keep))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=async_save
        )
        # One unnamed item, fixed up front: orbax would otherwise guess it from the newest step's folder, and a
        # step that lost its 'default' folder would make every restore fail.
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state) -> None:
        """Saves ``state`` at ``step`` (asynchronously; ``wait`` blocks until it is on disk)."""
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, state_like, step: int | None = None):
        """Restores into the structure, shapes, dtypes and shardings of ``state_like`` (concrete or abstract)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        return self._restore(step, abstract)

    def _restore(self, step: int, abstract):
        """Restores ``step`` into ``abstract``, converting from another registered parameter layout if needed."""
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as error:  # a mismatched tree, or a damaged step: try the other layouts, then re-raise
            for layout_of, convert in _LAYOUTS:
                layout = layout_of(abstract)
                if layout is None:
                    continue
                try:
                    restored = self.manager.restore(step, args=ocp.args.StandardRestore(convert(abstract, not layout)))
                except Exception:
                    continue
                converted = convert(restored, layout)
                return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), converted, abstract)
            raise error

    def restore_latest(self, state_like, log=None):
        """-> (step, state) of the newest readable checkpoint, or (None, None) when there is none.

        A step that cannot be read is reported in one line (step, path, short reason) through ``log`` (default:
        print on process 0) and the next older one is tried. Steps newer than the restored one are renamed
        ``<step>.unreadable`` (never deleted). With several processes, a step counts as read only when every
        process read it (one ``process_allgather`` of a flag per step tried), so all of them resume from the same
        step. Raises CheckpointError, touching nothing, when no step can be read.
        """
        log = log or _info
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None, None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        failed = []  # (step, reason), newest first
        for step in steps:
            state, reason = None, None
            with _quiet_unraisable():
                try:
                    state = self._restore(step, abstract)
                except Exception as e:  # orbax / TensorStore raise many kinds; any of them means "unreadable here"
                    reason = short_reason(e)
            if not _all_processes_agree(reason is None):
                reason = reason or 'unreadable on another process'
            if reason is None:
                self._set_aside([s for s, _ in failed], log, dict(failed), resumed=step)
                return step, state
            failed.append((step, reason))
        listing = '; '.join(f'step {s} ({r})' for s, r in failed)
        raise CheckpointError(
            f'no readable checkpoint in {self.directory}: {listing}. Nothing was deleted: move '
            'damaged step folders away to start again, or, if the model changed, resume with the '
            'config they were written with (or use a new workdir)'
        )

    def _set_aside(self, steps: list[int], log, reasons: dict, resumed: int) -> None:
        """Renames damaged steps newer than ``resumed`` to ``<step>.unreadable`` (process 0), then reloads orbax."""
        if not steps:
            return
        moved = {}
        for step in steps:
            target = self.step_path(step) + UNREADABLE_SUFFIX
            n = 1
            while os.path.exists(target):
                n += 1
                target = f'{self.step_path(step)}{UNREADABLE_SUFFIX}-{n}'
            moved[step] = target
        if jax.process_index() == 0:
            for step in steps:
                os.rename(self.step_path(step), moved[step])
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices('ssljax_checkpoint_set_aside')
        self.manager.reload()
        for step in steps:
            log(
                f'checkpoint step {step} in {self.step_path(step)} is unreadable ({reasons[step]}); kept as '
                f'{moved[step]}, resuming from step {resumed}'
            )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _info(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _all_processes_agree(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([ok], np.int32))))


@contextlib.contextmanager
def _quiet_unraisable():
    """Swallows the 'Exception ignored in <coroutine ...>' dumps (whole TensorStore specs) of a failed restore."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # finalise the abandoned read coroutines while the hook is quiet
        sys.unraisablehook = previous


_NOISE = (
    (re.compile(r'\s*\[tensorstore_spec.*', re.S), ''),
    (re.compile(r'\s*See full TensorStore details.*', re.S), ''),
    (re.compile(r'Error opening "\w+" driver: '), ''),
    (re.compile(r' in OCDBT database at local file "[^"]*"'), ''),
    (re.compile(r'<[^<>]* at 0x[0-9a-fA-F]+>'), '...'),
)


def short_reason(error: BaseException, limit: int = 160) -> str:
    """The innermost cause of ``error`` in one short line, without TensorStore specs or object reprs."""
    seen = [error]
    while seen[-1].__cause__ is not None and len(seen) < 10:
        seen.append(seen[-1].__cause__)
    inner = seen[-1]
    text = str(inner).strip()
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    text = ' '.join(text.split()) or type(inner).__name__
    if type(inner).__name__ not in ('ValueError', 'Exception') and not text.startswith(type(inner).__name__):
        text = f'{type(inner).__name__}: {text}'
    return text if len(text) <= limit else text[: limit - 3] + '...'


def list_steps(workdir: str) -> list[int]:
    """Steps of the finished checkpoints in ``workdir/checkpoints``, ascending."""
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'no checkpoints in {directory}')
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def resolve_step(workdir: str, step: int | None = None) -> int:
    """``step`` if ``workdir`` has a checkpoint of it, the latest step when None; FileNotFoundError otherwise."""
    directory = os.path.join(workdir, 'checkpoints')
    steps = list_steps(workdir) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f'no checkpoint in {directory}')
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(
            f'no checkpoint of step {step} in {directory}; it has steps {", ".join(map(str, steps))}'
        )
    return step


def load_tree(workdir: str, step: int):
    """A saved train state as a pytree of arrays on this process's first device, whatever topology wrote it.

    For analysis and tests: no model or config needed; the tree mirrors TrainState's fields as a dict.
    """
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

    path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step), 'default')
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    # The step's item folder has no step-level _CHECKPOINT_METADATA (the manager keeps it one level up), which orbax
    # reports as a warning on every call: quiet for the call.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            checkpointer.metadata(path).item_metadata.tree,
        )
        return checkpointer.restore(path, target)
    finally:
        absl_logging.set_verbosity(verbosity)
