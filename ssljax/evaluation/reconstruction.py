"""Reconstruction grids of masked image modeling: ``config.evals.<name>.type = 'reconstruction'``.

For ``num_images`` test images evenly spaced over the test split (the evaluation view: centre crop, resize,
normalise), the objective's hook ``reconstruct(variables, images, rng) -> {'reconstruction', 'pixel_mask',
'error'}`` (MAE, SimMIM, contrastive + masked) masks them with a fresh random mask from ``seed`` and reconstructs
them with the online network (encoder and decoder). One PNG per evaluation, ``DIR/figures/<name>_grid_<step>.png``,
has a row per image and three columns: the original, the masked input (masked pixels grey), and the reconstruction
(predicted pixels where masked, the original where visible, as MAE's visualisation), all mapped back to [0, 1] with
the view's mean and std. The same grid goes to TensorBoard (``DIR/tb``, tag ``<name>/grid``). The value reported is
``error``: the objective's reconstruction error on the masked pixels of these images (MSE for MAE, L1 for SimMIM),
in the normalised pixel space.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.config_lib import ConfigError
from ssljax.data import augment
from ssljax.evaluation.context import read_rows
from ssljax.evaluation.framework import Evaluator, register_evaluator

MASK_GREY = 0.5
MIN_CELL = 64  # pixels per grid cell side (small images are scaled up, nearest neighbour)


def compose_grid(original: np.ndarray, masked: np.ndarray, reconstruction: np.ndarray, gap: int = 2) -> np.ndarray:
    """uint8 [rows * (S + gap) + gap, 3 * (S + gap) + gap, 3]: row i holds original[i], masked[i], reconstruction[i]
    (float [N, H, W, 3] in [0, 1]), each scaled up by an integer factor to at least ``MIN_CELL`` pixels."""
    n, h, w, _ = original.shape
    k = max(1, -(-MIN_CELL // max(h, w)))
    ch, cw = h * k, w * k
    grid = np.full((n * (ch + gap) + gap, 3 * (cw + gap) + gap, 3), 255, np.uint8)
    for i in range(n):
        for j, panel in enumerate((original[i], masked[i], reconstruction[i])):
            cell = np.repeat(np.repeat(np.clip(panel, 0.0, 1.0), k, axis=0), k, axis=1)
            y, x = gap + i * (ch + gap), gap + j * (cw + gap)
            grid[y : y + ch, x : x + cw] = np.round(cell * 255).astype(np.uint8)
    return grid


@register_evaluator
class Reconstruction(Evaluator):
    """Reconstruction PNG grid and TensorBoard image; ``error`` on the masked pixels (see the module docstring)."""

    type = 'reconstruction'
    defaults = dict(num_images=8, seed=0)

    @classmethod
    def check(cls, settings):
        if settings.num_images < 1:
            return 'num_images', f'must be >= 1, got {settings.num_images}'
        if settings.seed < 0:
            return 'seed', f'must be >= 0, got {settings.seed}'
        return None

    def run(self, state, step):
        ctx = self.ctx
        if not hasattr(ctx.objective, 'reconstruct'):
            raise ConfigError(
                f'config key "evals.{self.name}.type": method {ctx.objective.name!r} does not '
                f'reconstruct images (MAE, SimMIM and masked_contrastive do)'
            )
        count = len(ctx.test.labels)
        n = min(int(self.settings.num_images), count)
        rows = np.unique(np.linspace(0, count - 1, n).round().astype(np.int64))  # spread over the split
        images = read_rows(ctx.test.images, rows)
        if not hasattr(self, '_fn'):
            size, objective = ctx.eval_size, ctx.objective
            mean, std = ctx.mean, ctx.std

            def fn(variables, raw, key):
                x = augment.eval_view(raw, size, mean, std)
                out = objective.reconstruct(variables, x, key)
                return x, out['reconstruction'], out['pixel_mask'], out['error']

            self._fn = jax.jit(fn)
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        x, recon, pixel_mask, error = self._fn(variables, jnp.asarray(images), jax.random.key(int(self.settings.seed)))
        mean, std = np.asarray(ctx.mean, np.float32), np.asarray(ctx.std, np.float32)
        original = np.asarray(x) * std + mean
        pred = np.asarray(recon) * std + mean
        m = np.asarray(pixel_mask)[..., None]
        grid = compose_grid(original, np.where(m, MASK_GREY, original), np.where(m, pred, original))
        self._write(grid, step)
        return {'error': float(error)}

    def _write(self, grid: np.ndarray, step: int) -> None:
        path = self.figure_path('grid', step)
        if path is None:
            return
        from PIL import Image

        Image.fromarray(grid).save(path)
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(self.ctx.workdir, 'tb'), filename_suffix=f'.{self.name}')
        try:
            writer.add_image(f'{self.name}/grid', grid, int(step), dataformats='HWC')
        finally:
            writer.close()
