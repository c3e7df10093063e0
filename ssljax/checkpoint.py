"""Checkpoints through orbax's CheckpointManager: save every N steps, keep the last K, resume from the workdir.

The whole train state is one pytree (step, params, batch statistics, optimizer state, objective state, probe, rng),
and the data position is a pure function of (seed, step), so restoring the pytree resumes the run exactly.
Orbax finalises a checkpoint by an atomic rename, so a process killed mid-save leaves the earlier ones intact.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        """Saves ``state`` at ``step`` (asynchronously; ``wait`` blocks until it is on disk)."""
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, state_like, step: int | None = None):
        """Restores into the structure, shapes, dtypes and shardings of ``state_like`` (concrete or abstract)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def list_steps(workdir: str) -> list[int]:
    """Steps of the finished checkpoints in ``workdir/checkpoints``, ascending."""
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'no checkpoints in {directory}')
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def load_tree(workdir: str, step: int):
    """A saved train state as a pytree of arrays on this process's first device, whatever topology wrote it.

    For analysis and tests: no model or config needed; the tree mirrors TrainState's fields as a dict.
    """
    path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step), 'default')
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return checkpointer.restore(path, target)
