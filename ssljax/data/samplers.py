"""Batch composition: which dataset indices make up the global batch of each step.

A sampler is chosen by ``config.sampler.name`` and maps ``(seed, step, sampler_state)`` to the ``global_batch``
dataset indices of that step, on the host, identically on every host (each host then reads its own slice). The
default, ``epoch_shuffle``, is what every reference does: a fresh seeded permutation per epoch, cut into batches.

A sampler that needs information from training (G-SimCLR's batches without two images of one pseudo-label) keeps
it in ``sampler_state``, a dict of numpy arrays that is part of the train state, so it is checkpointed and restored
and resume stays exact. The loop calls ``refresh(step, state, tools)`` before drawing the batch of every step in
``refresh_steps``; ``tools.train_features(network)`` gives the current encoder's features of the training set.

Write a new one with ``@register_sampler`` on a :class:`Sampler` subclass; its settings are the other keys of
``config.sampler`` (add them in the config file so that command-line overrides are checked).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar

import numpy as np

from ssljax.data import loader


class SamplerTools:
    """What a refresh may use: ``train_features(network='')`` -> float32 numpy [num_examples, D] (current encoder)."""

    def __init__(self, train_features: Callable[[str], np.ndarray]):
        self.train_features = train_features


class Sampler(abc.ABC):
    """Maps (seed, step, state) to the dataset indices of the global batch; deterministic on every host."""

    name: ClassVar[str] = 'sampler'

    def __init__(self, settings, num_examples: int, global_batch: int, seed: int):
        self.settings = settings
        self.num_examples = int(num_examples)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.steps_per_epoch = loader.steps_per_epoch(self.num_examples, self.global_batch)

    def init_state(self) -> dict[str, np.ndarray]:
        """The sampler's state at step 0 (numpy arrays of fixed shape and dtype; {} for stateless samplers)."""
        return {}

    @abc.abstractmethod
    def indices(self, step: int, state: dict[str, np.ndarray]) -> np.ndarray:
        """int64 [global_batch] dataset indices of the batch at ``step``: a pure function of (seed, step, state)."""

    def refresh_steps(self, step: int) -> bool:
        """Whether ``refresh`` runs before the batch of ``step`` is drawn. Never, by default."""
        return False

    def refresh(self, step: int, state: dict[str, np.ndarray], tools: SamplerTools) -> dict[str, np.ndarray]:
        """The new state (same shapes and dtypes). Called on every host with the same inputs."""
        return state


SAMPLERS: dict[str, type[Sampler]] = {}


def register_sampler(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator: makes the sampler available as ``config.sampler.name = cls.name``."""
    SAMPLERS[cls.name] = cls
    return cls


def create_sampler(config, num_examples: int) -> Sampler:
    name = config.sampler.name
    if name not in SAMPLERS:
        raise ValueError(f'unknown sampler {name!r} (config key "sampler.name"); known: {", ".join(sorted(SAMPLERS))}')
    return SAMPLERS[name](config.sampler, num_examples, config.batch_size, config.seed)


@register_sampler
class EpochShuffle(Sampler):
    """Epoch e = step // spe uses the permutation default_rng([seed, e]).permutation(N); step takes its slice
    [(step % spe) B, (step % spe + 1) B) with spe = N // B (the last N % B images of each permutation are dropped)."""

    name = 'epoch_shuffle'

    def indices(self, step: int, state: Any) -> np.ndarray:
        return loader.global_batch_indices(self.num_examples, self.global_batch, self.seed, step)
