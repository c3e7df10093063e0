"""Micro-benchmark of DirectPred's closed-form predictor: eigh vs Newton-Schulz, and its cost per training step.

Prints one JSON object per line:
  {"bench": "predictor", "d": ..., "method": ..., "ms": ..., "min_ms": ...}   W_p from a d x d F (median, min)
      methods: eigh (jnp.linalg.eigh + recomposition, the paper), newton_schulz (matrix products only, without the
      eigh fallback), newton_schulz_checked (with the lax.cond fallback, as the objective runs it), directcopy,
      plus "err_vs_eigh" (spectral norm of the difference) for the matmul-only ones.
  {"bench": "step", "predictor": ..., "solver": ..., "freq": ..., "ms_per_step": ..., "vs_linear": ...}
      a whole BYOL-family step (loss + gradient + SGD + objective.update) averaged over --steps steps, against the
      same step with a trained linear predictor (no closed-form update at all).

    python experiments/directpred/bench_predictor.py                      # CPU defaults, well under 2 minutes
    python experiments/directpred/bench_predictor.py --dims 128,256,512,2048 --backbone resnet18 --batch 256 --size 32 \
        --step-dim 256 --steps 50                               # the GPU question of issue 3 (<= 5% over BYOL)

CPU timings do not predict accelerator timings: on a CPU a d x d product and an eigendecomposition are both
compute-bound LAPACK/Eigen calls, while on a GPU eigh is a latency-bound solver and products run on tensor cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssljax.models.registry import create_encoder
from ssljax.objectives import OBJECTIVES, Context, create_objective
from ssljax.objectives import predictors as dp


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(median, min) wall time in ms of ``fn(*args)`` after one compile-and-run call.

    Both are printed: on a shared CPU, threaded LAPACK calls (eigh) slow down by 10x or more when the cores are
    oversubscribed, and the minimum is then the better estimate of the unloaded cost.
    """
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def correlation(d: int, seed: int = 0) -> jax.Array:
    """A full-rank correlation matrix with a decaying spectrum, like a trained projector's."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(4 * d, d)) * np.exp(-np.arange(d) / (d / 8))
    return jnp.asarray(f.T @ f / (4 * d), jnp.float32)


def bench_predictor(dims, repeats: int) -> None:
    fns = {
        'eigh': jax.jit(lambda F: dp.eigh_predictor(F)),
        'newton_schulz': jax.jit(lambda F: dp.newton_schulz_predictor(F)[0]),
        'newton_schulz_checked': jax.jit(lambda F: dp.predictor_from_correlation(F, method='newton_schulz')),
        'directcopy': jax.jit(lambda F: dp.directcopy_predictor(F)),
    }
    for d in dims:
        F = correlation(d)
        exact = np.asarray(fns['eigh'](F), np.float64)
        for name, fn in fns.items():
            median, best = timed(fn, F, repeats=repeats)
            row = {'bench': 'predictor', 'd': d, 'method': name, 'ms': round(median, 3), 'min_ms': round(best, 3)}
            if name.startswith('newton_schulz'):
                row['err_vs_eigh'] = float(np.linalg.norm(np.asarray(fn(F), np.float64) - exact, 2))
            print(json.dumps(row), flush=True)


def family_objective(args, predictor: str, solver: str, freq: int):
    encoder, feature_dim = create_encoder(args.backbone, cifar_stem=True)
    cfg = ml_collections.ConfigDict(
        dict(
            method='directpred',
            batch_size=args.batch,
            objective=dict(
                OBJECTIVES['directpred'].config_defaults(),
                projector_hidden=(args.step_hidden,),
                projector_dim=args.step_dim,
                projector_bn=True,
                predictor=predictor,
                predictor_hidden=(args.step_hidden,),
                predictor_dim=args.step_dim,
                predictor_bn=True,
                ema_base=0.99,
                ema_final=1.0,
                rho=0.3,
                eps=0.01,
                freq=freq,
                center=False,
                transform='sqrt',
                solver=solver,
                directcopy_norm='spectral',
            ),
        )
    )
    ctx = Context(
        encoder=encoder,
        feature_dim=feature_dim,
        total_steps=10 * args.steps,
        global_batch=args.batch,
        num_examples=args.batch * 100,
    )
    return create_objective(cfg, ctx)


def bench_step(args) -> None:
    key = jax.random.PRNGKey(0)
    views = [jax.random.normal(jax.random.fold_in(key, i), (args.batch, args.size, args.size, 3)) for i in range(2)]
    variants = (
        [('linear', 'eigh', 1)]
        + [('directpred', s, f) for s in ('eigh', 'newton_schulz') for f in (1, 10)]
        + [('directcopy', 'eigh', 1)]
    )
    baseline = None
    for predictor, solver, freq in variants:
        objective = family_objective(args, predictor, solver, freq)
        enc = objective.ctx.encoder.init(key, views[0][:2], train=False)
        heads, state = jax.jit(objective.init)(key, enc)
        params = {'encoder': enc['params'], **heads['params']}
        stats = {'encoder': enc.get('batch_stats', {}), **heads['batch_stats']}

        @jax.jit
        def step(params, stats, state, t):
            def loss_fn(p):
                return objective.loss({'params': p, 'batch_stats': stats}, state, views, {}, key)

            (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            frozen = set(objective.frozen_heads)
            params = {
                k: v if k in frozen else jax.tree.map(lambda p, g: p - 1e-3 * g, v, grads[k]) for k, v in params.items()
            }
            params, state = objective.update(params, out.objective_state, t)
            return params, out.batch_stats, state, loss

        carry = step(params, stats, state, jnp.asarray(1))  # compile
        jax.block_until_ready(carry)
        t0 = time.perf_counter()
        for t in range(2, args.steps + 2):
            carry = step(*carry[:3], jnp.asarray(t))
        jax.block_until_ready(carry)
        ms = 1e3 * (time.perf_counter() - t0) / args.steps
        baseline = baseline or ms
        print(
            json.dumps(
                {
                    'bench': 'step',
                    'predictor': predictor,
                    'solver': solver,
                    'freq': freq,
                    'd': args.step_dim,
                    'backbone': args.backbone,
                    'batch': args.batch,
                    'size': args.size,
                    'ms_per_step': round(ms, 3),
                    'vs_linear': round(ms / baseline, 3),
                    'loss': float(carry[3]),
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dims', default='128,256,512', help='matrix sizes for the predictor benchmark')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--backbone', default='resnet_tiny')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--size', type=int, default=16)
    parser.add_argument('--step-dim', type=int, default=256, help='projector output width d in the step benchmark')
    parser.add_argument('--step-hidden', type=int, default=512)
    parser.add_argument('--steps', type=int, default=20, help='timed steps per variant (a multiple of 10)')
    parser.add_argument('--skip-step', action='store_true')
    args = parser.parse_args()
    print(
        json.dumps(
            {'bench': 'env', 'backend': jax.default_backend(), 'device': str(jax.devices()[0]), 'jax': jax.__version__}
        ),
        flush=True,
    )
    bench_predictor([int(d) for d in args.dims.split(',')], args.repeats)
    if not args.skip_step:
        bench_step(args)


if __name__ == '__main__':
    main()
