"""Command line: python -m ssljax.main --config configs/<method>.py[:args] --workdir DIR [--config.KEY=VALUE ...]

Trains and evaluates one run (``ssljax.train.train_and_evaluate``). Errors and exit codes: ``ssljax.cli`` (one line
``ssljax: error: ...``; 2 for a config, file or workdir problem, checked before anything is written; 1 for other
errors; 130 when interrupted).
"""

from __future__ import annotations

import argparse
import sys

from ssljax import cli


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(prog='python -m ssljax.main', description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='configs/<method>.py[:key=value,...]')
    parser.add_argument('--workdir', required=True, help='checkpoints, metrics.jsonl, tb/ and summary.json go here')
    parser.add_argument(
        '--allow-config-changes',
        action='store_true',
        help='resume a workdir with a config that differs from the one it was started with '
        '(the differences are recorded in WORKDIR/config_history.jsonl)',
    )
    return cli.parse_known(parser, argv)


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)

    def train_from_args():
        from ssljax import configure, logging_lib, train
        from ssljax import workdir as workdir_lib

        config = configure.load_config_with_overrides(args.config, overrides, log=logging_lib.info)
        workdir_lib.check_workdir(args.workdir)
        train.train_and_evaluate(config, args.workdir, allow_config_changes=args.allow_config_changes)

    return cli.run_reporting_errors(train_from_args)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
