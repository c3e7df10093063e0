"""Train and evaluate one run: ``ssljax train --config METHOD[:args] --workdir DIR [--config.KEY=VALUE ...]``.

(also ``python -m ssljax.main``.) Trains and evaluates one run (``ssljax.train.train_and_evaluate``). The config is
checked completely before anything is written: a bad key, value or range, an unknown method, dataset or backbone, a
missing data_dir exit with one line ``ssljax: error: ...`` and exit code 2, and the workdir is not created. Other
errors exit 1, an interrupt 130 (``ssljax.cli``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from ssljax import cli

SMOKE = ('total_steps=2', 'evals=none')  # --smoke: two steps, no evaluator, no random-init baseline

EPILOG = """\
config keys: --config.KEY=VALUE sets any key of the config (list them: ssljax keys METHOD; methods, datasets,
backbones and evaluators: ssljax configs).

a smoke run in seconds (no evaluators, no random-init baseline):
  ssljax train --config simclr --workdir W --config.total_steps=2 --config.evals=none   (or: --smoke)

the README's main job (SimCLR on the embedded MNIST subset, then read W/summary.json):
  ssljax train --config simclr --workdir workdirs/simclr_mnist
"""


def parse_args(argv: list[str]):
    from ssljax import config_lib

    names = config_lib.config_names()
    parser = argparse.ArgumentParser(
        prog=cli.prog('python -m ssljax.main'),
        description=__doc__.splitlines()[0],
        epilog=f'{textwrap.fill("methods (--config NAME): " + ", ".join(names), 110)}\n\n{EPILOG}' if names else EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--config',
        required=True,
        help='a method name (simclr) or config file (configs/simclr.py), with optional variant arguments after a '
        'colon: simclr:dataset=cifar10',
    )
    parser.add_argument('--workdir', required=True, help='checkpoints, metrics.jsonl, tb/ and summary.json go here')
    parser.add_argument(
        '--allow-config-changes',
        action='store_true',
        help='resume a workdir with a config that differs from the one it was started with '
        '(the differences are recorded in WORKDIR/config_history.jsonl)',
    )
    parser.add_argument(
        '--smoke',
        action='store_true',
        help='check an install in seconds: the same as --config.total_steps=2 --config.evals=none, placed before '
        'the other --config overrides',
    )
    args, overrides = cli.parse_known(parser, argv)
    if args.smoke:
        overrides = [*SMOKE, *overrides]
    return args, overrides


def load_checked(spec: str, overrides: list[str]):
    """The config of ``spec`` with ``overrides``, validated for this machine's devices (ConfigError otherwise)."""
    import jax

    from ssljax import configure, logging_lib, parallel

    config = configure.load_config_with_overrides(spec, overrides, log=logging_lib.info)
    parallel.initialize_distributed(config)  # before JAX is asked about devices
    configure.validate(config, jax.device_count())  # everything a run checks, before the workdir exists
    return config


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)

    def train_from_args():
        from ssljax import train
        from ssljax import workdir as workdir_lib

        config = load_checked(args.config, overrides)
        workdir_lib.check_workdir(args.workdir)
        train.train_and_evaluate(config, args.workdir, allow_config_changes=args.allow_config_changes)

    return cli.run_reporting_errors(train_from_args)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
