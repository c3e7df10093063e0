"""Evaluate a run's checkpoint: python -m ssljax.evaluate --workdir DIR [--step N] [--config.KEY=VALUE ...]

Reads DIR/config.json (the run's config, overrides applied on top), restores the latest checkpoint (or step N), runs
every evaluator of ``config.evals`` once, prints the results as one JSON line and writes DIR/eval_<STEP>.json
(strict JSON: NaN -> null). The data, subsample and seeds are the run's, so knn_top1 and linear_top1 reproduce the
values of its summary.json. Errors end with one line ``ssljax: error: ...`` and a non-zero exit, as ssljax.main.
Figures (e.g. the diagnostics' embedding spectrum) go to DIR/figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys


def load_run_config(workdir: str, overrides: list[str]):
    """DIR/config.json as a ConfigDict, with ``KEY=VALUE`` overrides applied (typed, checked)."""
    import ml_collections

    from ssljax import config_lib
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no config.json in {workdir} (is it the --workdir of a run?)')
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return config_lib.apply_overrides(config, overrides)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def evaluate(config, workdir: str, step: int | None = None, names=None) -> tuple[int, dict]:
    """Restores ``workdir``'s checkpoint at ``step`` (latest when None) and runs every evaluator (or ``names``)
    -> (step, results). The run is set up by ``train.setup``, as the train loop sets it up: same data, subsample,
    experiment and state structure, so the checkpoint restores into it and the features are the run's."""
    import jax

    from ssljax import checkpoint as ckpt_lib
    from ssljax import train
    from ssljax.evaluation import evaluators

    evaluators.validate_evals(config)
    directory = os.path.join(workdir, 'checkpoints')
    steps = ckpt_lib.list_steps(workdir) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f'no checkpoint in {directory}')
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f'no checkpoint of step {step} in {directory}; it has steps '
                                f'{", ".join(map(str, steps))}')
    run = train.setup(config, workdir)
    ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
    try:
        state = ckpt.restore(run.state, step)
    finally:
        ckpt.close()
    run.runner.check_networks(state)
    results = run.runner.run(state, step, names=names, final=True)
    if jax.process_index() == 0:
        path = os.path.join(workdir, f'eval_{step}.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(_json_safe({'step': step, **results}), f, indent=2, sort_keys=True, allow_nan=False)
        os.replace(path + '.tmp', path)
    return step, results


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(prog='python -m ssljax.evaluate', description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='the run directory (config.json, checkpoints/)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith('--config.'):
            parser.error(f'unrecognised argument {item!r} (overrides are --config.KEY=VALUE)')
        overrides.append(item[len('--config.'):])
    return args, overrides


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    from ssljax import config_lib
    try:
        config = load_run_config(args.workdir, overrides)
        step, results = evaluate(config, args.workdir, args.step)
    except (config_lib.ConfigError, ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        if os.environ.get('SSLJAX_TRACEBACK'):
            raise
        hint = '' if isinstance(e, (config_lib.ConfigError, FileNotFoundError)) else ' (SSLJAX_TRACEBACK=1 shows where)'
        print(f'ssljax: error: {e}{hint}', file=sys.stderr)
        return 2 if isinstance(e, (config_lib.ConfigError, FileNotFoundError)) else 1
    print(json.dumps(_json_safe({'step': step, **results}), sort_keys=True))
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
