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


def evaluate(config, workdir: str, step: int | None = None, names=None) -> tuple[int, dict]:
    """Restores ``workdir``'s checkpoint at ``step`` (latest when None) and runs every evaluator (or ``names``)
    -> (step, results). The run is set up by ``train.setup``, as the train loop sets it up: same data, subsample,
    experiment and state structure, so the checkpoint restores into it and the features are the run's."""
    from ssljax import checkpoint as ckpt_lib
    from ssljax import logging_lib, train
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
    logging_lib.write_json(os.path.join(workdir, f'eval_{step}.json'), {'step': step, **results})
    return step, results


def parse_args(argv: list[str]):
    from ssljax.main import parse_known
    parser = argparse.ArgumentParser(prog='python -m ssljax.evaluate', description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='the run directory (config.json, checkpoints/)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
    return parse_known(parser, argv)


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)

    def evaluate_from_args():
        from ssljax import logging_lib
        step, results = evaluate(load_run_config(args.workdir, overrides), args.workdir, args.step)
        print(logging_lib.dumps({'step': step, **results}, sort_keys=True))

    from ssljax.main import run_reporting_errors
    return run_reporting_errors(evaluate_from_args)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
