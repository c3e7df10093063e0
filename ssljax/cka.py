"""Linear CKA between the layers of two encoders:
python -m ssljax.cka --workdir_a A --workdir_b B --out DIR [--step_a N] [--step_b N] [--network_a NAME]
[--network_b NAME] [--max_examples 2048] [--split test] [--token_pool mean|cls]

Linear centred kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited")
of two representations X [n, p] and Y [n, q] of the same n examples, with H = I - 11^T / n the centring matrix,
K = X X^T and L = Y Y^T:

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   HSIC(K, L) = tr(K H L H) / (n - 1)^2
              = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)          (Xc = H X, Yc = H Y)
              = <Xc Xc^T, Yc Yc^T>_F / (||Xc Xc^T||_F ||Yc Yc^T||_F).

It lies in [0, 1], is 1 for X = Y, 0 when every centred feature of X is orthogonal to every centred feature of Y,
and is invariant to orthogonal transforms and isotropic scaling of either side (not to arbitrary invertible maps).

The command encodes the same images (a seeded subset of ``max_examples`` of run A's evaluation split, ``--split``
to pick another) with both encoders, each through its own run's evaluation view, reads every layer of each
(ResNet stages, ViT blocks: `evaluation.analysis.layer_features`, plus 'output', the encoder's pooled features) and
writes DIR/cka.json (layer names, the matrix cka[i][j] = CKA(layer i of A, layer j of B), runs, steps) and the heat
map DIR/cka.png. A and B may be the same workdir (at two steps, or one network against another).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Sequence

import numpy as np


def linear_cka(x, y) -> float:
    """Linear CKA of x [n, p] and y [n, q] (rows: the same n examples), in float64 (see the module doc).

    Uses the feature-space form ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) when n > max(p, q), else the
    equal Gram form <Xc Xc^T, Yc Yc^T>_F / (||Xc Xc^T||_F ||Yc Yc^T||_F). NaN when either side is constant.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f'linear_cka: need x [n, p] and y [n, q] with the same n, got {x.shape} and {y.shape}')
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[0] > max(x.shape[1], y.shape[1]):
        num = np.sum((y.T @ x) ** 2)
        den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    else:
        k, l_ = x @ x.T, y @ y.T
        num = np.sum(k * l_)
        den = np.linalg.norm(k) * np.linalg.norm(l_)
    return float(num / den) if den > 0 else float('nan')


def cka_matrix(layers_a: Sequence, layers_b: Sequence) -> np.ndarray:
    """float64 [len(a), len(b)]: CKA(layers_a[i], layers_b[j]) for every pair (each [n, d_layer], the same n rows).

    Computed in the Gram form on the default JAX device: G = Xc Xc^T / ||Xc Xc^T||_F once per layer (float32,
    n x n), then cka[i, j] = <G_a_i, G_b_j>_F; only the Grams of B and one of A are held at a time.
    """
    import jax.numpy as jnp

    unit_gram = _unit_gram()
    n = {np.shape(x)[0] for x in (*layers_a, *layers_b)}
    if len(n) != 1:
        raise ValueError(f'cka_matrix: every layer needs the same number of rows, got {sorted(n)}')
    grams_b = [unit_gram(jnp.asarray(y)) for y in layers_b]
    out = np.zeros((len(layers_a), len(layers_b)))
    for i, x in enumerate(layers_a):
        g = unit_gram(jnp.asarray(x))
        out[i] = [float(jnp.sum(g * h)) for h in grams_b]
    return out


@functools.lru_cache(maxsize=1)
def _unit_gram():
    """jit(x -> Xc Xc^T / ||Xc Xc^T||_F), Xc = x - mean over rows, in float32."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def unit_gram(x):
        x = x.astype(jnp.float32)
        x = x - jnp.mean(x, axis=0)
        k = x @ x.T
        return k / jnp.linalg.norm(k)

    return unit_gram


def encode_layers(restored, images, batch_size: int = 256, token_pool: str = 'mean') -> dict[str, np.ndarray]:
    """{layer: float32 [N, D]} of a `export.RestoredEncoder` on uint8 images [N, H, W, 3] (or any source with
    ``len`` and slicing), through its run's evaluation view; the layers of `analysis.layer_features`, then
    'output' (the encoder's pooled features). One jitted call per block of ``batch_size`` (the last one padded)."""
    fn = _encode_fn(restored.module, restored.image_size, tuple(restored.mean), tuple(restored.std), token_pool)
    count = len(images)
    parts: dict[str, list] = {}
    for start in range(0, count, batch_size):
        block = np.asarray(images[start : start + batch_size])
        if block.shape[0] < batch_size:
            block = np.concatenate([block, np.zeros((batch_size - block.shape[0],) + block.shape[1:], block.dtype)])
        for name, value in fn(restored.variables, block).items():
            parts.setdefault(name, []).append(np.asarray(value))
    from ssljax.evaluation.analysis import layer_order

    names = sorted((n for n in parts if n != 'output'), key=layer_order) + ['output']
    return {name: np.concatenate(parts[name])[:count] for name in names}


@functools.lru_cache(maxsize=8)
def _encode_fn(module, size: int, mean: tuple, std: tuple, token_pool: str):
    """One jitted encoder per architecture and view (two runs of one architecture share its compilation)."""
    import jax
    import jax.numpy as jnp

    from ssljax.data import augment
    from ssljax.evaluation.analysis import layer_features

    @jax.jit
    def fn(variables, block):
        x = augment.eval_view(block, size, mean, std)
        layers = layer_features(module, variables, x, token_pool)
        return {**layers, 'output': module.apply(variables, x, train=False)['pooled'].astype(jnp.float32)}

    return fn


def compare(
    workdir_a: str,
    workdir_b: str,
    out: str,
    step_a: int | None = None,
    step_b: int | None = None,
    network_a: str = '',
    network_b: str = '',
    max_examples: int = 2048,
    split: str = '',
    token_pool: str = 'mean',
    batch_size: int = 256,
) -> dict:
    """Computes and writes the layer-by-layer CKA matrix of two runs' encoders (see the module doc) -> the JSON."""
    from ssljax import logging_lib
    from ssljax.data import pipeline
    from ssljax.export import restore_encoder

    if max_examples < 0 or max_examples == 1:
        raise ValueError(f'--max_examples must be 0 (all) or >= 2, got {max_examples}')
    a = restore_encoder(workdir_a, step_a, network_a)
    b = restore_encoder(workdir_b, step_b, network_b)
    split = split or a.config.eval_split
    data = pipeline.load_split(a.config, split, max_examples)
    feats_a = encode_layers(a, data.images, batch_size, token_pool)
    feats_b = encode_layers(b, data.images, batch_size, token_pool)
    matrix = cka_matrix(list(feats_a.values()), list(feats_b.values()))
    result = {
        'cka': matrix.tolist(),
        'layers_a': list(feats_a),
        'layers_b': list(feats_b),
        'dims_a': [int(v.shape[1]) for v in feats_a.values()],
        'dims_b': [int(v.shape[1]) for v in feats_b.values()],
        'num_examples': len(data.labels),
        'images': f'{a.config.dataset}:{split}',
        'token_pool': token_pool,
        **{
            f'{key}_{side}': value
            for side, r, w in (('a', a, workdir_a), ('b', b, workdir_b))
            for key, value in (
                ('workdir', os.path.abspath(w)),
                ('step', r.step),
                ('network', r.network),
                ('method', r.config.method),
                ('backbone', r.config.model.backbone),
            )
        },
    }
    os.makedirs(out, exist_ok=True)
    logging_lib.write_json(os.path.join(out, 'cka.json'), result)
    plot_cka(result, os.path.join(out, 'cka.png'))
    return result


def plot_cka(result: dict, path: str) -> None:
    """Heat map of ``result['cka']`` (rows: layers of A, columns: layers of B, colour scale [0, 1])."""
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it is

    matrix = np.asarray(result['cka'], np.float64)
    rows, cols = result['layers_a'], result['layers_b']
    fig = Figure(figsize=(1.6 + 0.42 * max(len(cols), 4), 1.4 + 0.38 * max(len(rows), 4)))
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap='magma', origin='lower')
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha='right', fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)

    def label(s):
        return (
            f"{result[f'method_{s}']} {result[f'backbone_{s}']} ({result[f'network_{s}']}, step {result[f'step_{s}']})"
        )

    ax.set_xlabel(f'B: {label("b")}', fontsize=8)
    ax.set_ylabel(f'A: {label("a")}', fontsize=8)
    if len(rows) * len(cols) <= 64:
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(
                    j,
                    i,
                    f'{matrix[i, j]:.2f}',
                    ha='center',
                    va='center',
                    fontsize=6,
                    color='black' if matrix[i, j] > 0.6 else 'white',
                )
    ax.set_title(f"linear CKA on {result['num_examples']} images of {result['images']}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv: list[str]):
    from ssljax import cli

    parser = argparse.ArgumentParser(prog=cli.prog('python -m ssljax.cka'), description=__doc__.splitlines()[0])
    parser.add_argument('--workdir-a', '--workdir_a', required=True, help='run A (its images are used)')
    parser.add_argument('--workdir-b', '--workdir_b', required=True, help='run B (may be A)')
    parser.add_argument('--out', required=True, help='folder for cka.json and cka.png')
    parser.add_argument(
        '--step-a', '--step_a', type=int, default=None, help='checkpoint step of A (default: the latest)'
    )
    parser.add_argument(
        '--step-b', '--step_b', type=int, default=None, help='checkpoint step of B (default: the latest)'
    )
    networks = ('', 'online', 'target', 'teacher')
    parser.add_argument(
        '--network-a', '--network_a', default='', choices=networks, help="A's encoder (default: the evaluated one)"
    )
    parser.add_argument(
        '--network-b', '--network_b', default='', choices=networks, help="B's encoder (default: the evaluated one)"
    )
    parser.add_argument(
        '--max-examples', '--max_examples', type=int, default=2048, help='images compared (seeded subset; 0: all)'
    )
    parser.add_argument('--split', default='', help="A's split to read the images from (default: its eval_split)")
    parser.add_argument(
        '--token-pool', '--token_pool', default='mean', choices=('mean', 'cls'), help='pooling of ViT block tokens'
    )
    parser.add_argument('--batch-size', '--batch_size', type=int, default=256, help='images per encoder call')
    return parser.parse_args(argv)  # --workdir_a and the other snake_case spellings stay accepted


def run(argv: list[str]) -> int:
    args = parse_args(argv)

    def compare_from_args():
        result = compare(
            args.workdir_a,
            args.workdir_b,
            args.out,
            args.step_a,
            args.step_b,
            args.network_a,
            args.network_b,
            args.max_examples,
            args.split,
            args.token_pool,
            args.batch_size,
        )
        print(
            f"cka {len(result['layers_a'])} x {len(result['layers_b'])} on {result['num_examples']} images -> "
            f"{os.path.join(args.out, 'cka.json')}, cka.png"
        )

    from ssljax.cli import run_reporting_errors

    return run_reporting_errors(compare_from_args)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
