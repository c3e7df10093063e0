"""Evaluate a run's checkpoint: python -m ssljax.evaluate --workdir DIR [--step N] [--only NAME[,NAME]]
[--config.KEY=VALUE ...]

Reads DIR/config.json (the run's config, overrides applied on top), restores the latest checkpoint (or step N), runs
every evaluator of ``config.evals`` once (or only those named by ``--only``), prints the results as one JSON line and
writes them into DIR/eval_<STEP>.json (strict JSON: NaN -> null; the values of evaluators that did not run this time
are kept from an earlier eval_<STEP>.json). The data, subsample and seeds are the run's, so knn_top1 and linear_top1
reproduce the values of its summary.json. Errors end with one line ``ssljax: error: ...`` and a non-zero exit
(``ssljax.cli``). Figures (e.g. the diagnostics' embedding spectrum) go to DIR/figures.

Evaluators the run did not have are added by naming their type: ``--config.evals.NAME.type=TYPE`` with a NAME that
is not in the run's config adds ``evals.NAME`` with TYPE's default settings, which further
``--config.evals.NAME.KEY=VALUE`` change; e.g. part-level numbers of a finished run, running only that evaluator:

    python -m ssljax.evaluate --workdir DIR --config.evals.part.type=part_probe --only part
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from typing import Sequence


def load_run_config(workdir: str, overrides: list[str]):
    """DIR/config.json as a ConfigDict, with ``KEY=VALUE`` overrides applied (typed, checked)."""
    import ml_collections

    from ssljax import configure

    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no config.json in {workdir} (is it the --workdir of a run?)')
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return configure.apply_overrides(config, overrides)


def evaluate(config, workdir: str, step: int | None = None, names=None) -> tuple[int, dict]:
    """Restores ``workdir``'s checkpoint at ``step`` (latest when None) and runs every evaluator (or ``names``)
    -> (step, results). The run is set up by ``train.setup``, as the train loop sets it up: same data, subsample,
    experiment and state structure, so the checkpoint restores into it and the features are the run's."""
    from ssljax import checkpoint as ckpt_lib
    from ssljax import config_lib, logging_lib, train

    # config.evals is checked once, by configure.validate in train.setup below (before any data is read)
    unknown = [n for n in (names or ()) if n not in config.evals]
    if unknown:
        raise config_lib.ConfigError(
            f'--only names {", ".join(map(repr, unknown))}, which config.evals does not '
            f'define; defined: {", ".join(config.evals)}'
        )
    step = ckpt_lib.resolve_step(workdir, step)
    run = train.setup(config, workdir)
    ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
    try:
        state = ckpt.restore(run.state, step)
    finally:
        ckpt.close()
    run.runner.check_networks(state)
    results = run.runner.run(state, step, names=names, final=True)
    path = os.path.join(workdir, f'eval_{step}.json')
    kept = _earlier_values(path, ran=run.runner.names if names is None else tuple(names), defined=tuple(config.evals))
    logging_lib.write_json(path, {**kept, 'step': step, **results})
    return step, results


def evaluate_workdir(
    workdir: str, step: int | None = None, only: Sequence[str] | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Scores a finished (or interrupted) run's checkpoint with its evaluators -> ``{'step': N, <name>_<value>: ...}``.

    This is ``ssljax.evaluate(workdir, ...)`` (the module is callable) and ``ssljax evaluate --workdir DIR``.
    ``step``: the checkpoint (default: the latest); ``only``: evaluator names to run (default: all of the run's);
    ``overrides``: ``KEY=VALUE`` strings applied to the run's config, e.g. ``['evals.part.type=part_probe']`` adds an
    evaluator. The values are also merged into ``workdir/eval_<step>.json``.
    """
    names = [n for n in only] if only else None
    at, results = evaluate(load_run_config(workdir, list(overrides)), workdir, step, names)
    return {'step': at, **results}


def _earlier_values(path: str, ran: tuple, defined: tuple) -> dict:
    """The values of an earlier ``path`` that no evaluator in ``ran`` wrote: a key belongs to the evaluator whose
    name is its longest prefix ``<name>_`` among ``defined`` (so 'knn_big_top1' is knn_big's, not knn's)."""
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict):
        return {}

    def owner(key):
        names = [n for n in defined if key.startswith(f'{n}_')]
        return max(names, key=len) if names else None

    return {k: v for k, v in earlier.items() if k != 'step' and owner(k) not in ran}


def parse_args(argv: list[str]):
    from ssljax import cli
    from ssljax.cli import parse_known

    parser = argparse.ArgumentParser(prog=cli.prog('python -m ssljax.evaluate'), description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='the run directory (config.json, checkpoints/)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
    parser.add_argument('--only', default='', help='comma-separated evaluator names to run (default: all)')
    return parse_known(parser, argv)


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)

    def evaluate_from_args():
        from ssljax import logging_lib

        names = [n.strip() for n in args.only.split(',') if n.strip()] or None
        print(logging_lib.dumps(evaluate_workdir(args.workdir, args.step, names, overrides), sort_keys=True))

    from ssljax.cli import run_reporting_errors

    return run_reporting_errors(evaluate_from_args)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


class _CallableModule(types.ModuleType):
    """``ssljax.evaluate`` is this module, and calling it is :func:`evaluate_workdir`."""

    def __call__(self, workdir: str, step: int | None = None, only=None, overrides=()) -> dict:
        return evaluate_workdir(workdir, step, only, overrides)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == '__main__':
    main()
