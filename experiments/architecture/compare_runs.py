"""Behaviour check for refactors: every method config, 20 steps from the same seed, losses compared bit for bit.

Record the train metrics of every step (``log_every=1``, evaluators and the random-init baseline off, no
checkpoints) of each config below, at one commit, then at another, and compare:

    python experiments/architecture/compare_runs.py record --out /tmp/before.json      # at the old commit
    python experiments/architecture/compare_runs.py record --out /tmp/after.json       # at the new commit
    python experiments/architecture/compare_runs.py compare /tmp/before.json /tmp/after.json

``compare`` prints one line per config (identical, or the first step and metric that differ with both values)
and exits 1 if any differ. Values are compared as the float64 numbers metrics.jsonl holds (bit-identical on the
same machine and JAX build). ``--only simclr,byol`` records a subset; ``--steps`` changes the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every method config, and the variant arguments that switch a method's code path.
SPECS = (
    'simclr',
    'mocov2',
    'mocov3',
    'mocov3:backbone=vit_test',
    'mochi',
    'dcl',
    'dclw',
    'triplet',
    'triplet:negative=truncated',
    'isogclr',
    'contrastive_clustering',
    'gsimclr',
    'densecl',
    'byol',
    'simsiam',
    'directpred',
    'directpred:predictor=directcopy',
    'directpred:predictor=linear',
    'barlow_twins',
    'vicreg',
    'dino',
    'mae',
    'simmim',
    'simmim:backbone=resnet_mini',
    'masked_contrastive',
    'masked_contrastive:term=byol',
    'speedrun_cifar10:dataset=mnist',  # the speedrun recipe (BYOL) on the embedded data
)


def _load(spec: str, overrides: list[str]):
    try:  # the layered package: validation over the registries lives in ssljax.configure
        from ssljax.configure import load_config_with_overrides
    except ImportError:
        from ssljax.config_lib import load_config_with_overrides
    name, _, arg = spec.partition(':')
    path = os.path.join(REPO, 'configs', f'{name}.py')
    return load_config_with_overrides(f'{path}:{arg}' if arg else path, overrides)


def record_one(spec: str, steps: int) -> list[dict]:
    import ml_collections

    from ssljax import train

    config = _load(
        spec, [f'total_steps={steps}', 'log_every=1', 'checkpoint_every=0', 'eval.random_init_baseline=False']
    )
    with config.unlocked():
        config.evals = ml_collections.ConfigDict()
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(config, workdir)
        rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
    return [
        {k: v for k, v in r.items() if k.startswith('train/') and k != 'train/samples_per_s'} | {'step': r['step']}
        for r in rows
        if any(k.startswith('train/') for k in r)
    ]


def record(args) -> None:
    specs = args.only.split(',') if args.only else SPECS
    out = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for spec in specs:
        if spec in out and not args.rerun:
            continue
        start = time.time()
        out[spec] = record_one(spec, args.steps)
        print(
            f'{spec}: {len(out[spec])} rows, final loss {out[spec][-1]["train/loss"]:.6f} '
            f'({time.time() - start:.0f} s)',
            flush=True,
        )
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=0)


def compare(args) -> int:
    a, b = json.load(open(args.a)), json.load(open(args.b))
    bad = 0
    for spec in sorted(set(a) | set(b)):
        if spec not in a or spec not in b:
            print(f'{spec}: only in {args.a if spec in a else args.b}')
            bad += 1
            continue
        diff = None
        if len(a[spec]) != len(b[spec]):
            diff = f'{len(a[spec])} vs {len(b[spec])} rows'
        for ra, rb in zip(a[spec], b[spec]):
            for key in sorted(set(ra) | set(rb)):
                if diff is None and ra.get(key) != rb.get(key):
                    diff = f'step {ra["step"]} {key}: {ra.get(key)!r} vs {rb.get(key)!r}'
        print(
            f'{spec}: {"identical" if diff is None else "DIFFERS, " + diff} '
            f'({len(a[spec])} steps, final loss {a[spec][-1].get("train/loss")!r})'
        )
        bad += diff is not None
    print(f'{len(set(a) | set(b)) - bad} identical, {bad} differ')
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    rec = sub.add_parser('record')
    rec.add_argument('--out', required=True)
    rec.add_argument('--steps', type=int, default=20)
    rec.add_argument('--only', default='')
    rec.add_argument('--rerun', action='store_true')
    cmp_ = sub.add_parser('compare')
    cmp_.add_argument('a')
    cmp_.add_argument('b')
    args = parser.parse_args(argv)
    if args.command == 'record':
        record(args)
        return 0
    return compare(args)


if __name__ == '__main__':
    sys.exit(main())
