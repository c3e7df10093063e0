"""Command line: python -m ssljax.main --config configs/<method>.py[:args] --workdir DIR [--config.KEY=VALUE ...]

A run that cannot start or cannot go on ends with one line naming the problem and a non-zero exit
(set SSLJAX_TRACEBACK=1 for the full traceback); checkpoints already written are never touched.
Exit codes: 2 for a config, file or workdir problem (checked before anything runs), 1 for other errors, 130 when
interrupted (a KeyboardInterrupt that escaped the train loop's own Ctrl-C handling, e.g. a second Ctrl-C).
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_known(parser: argparse.ArgumentParser, argv: list[str]):
    """-> (args, overrides): every argument the parser does not know must be ``--config.KEY=VALUE``."""
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith('--config.'):
            parser.error(f'unrecognised argument {item!r} (overrides are --config.KEY=VALUE)')
        overrides.append(item[len('--config.'):])
    return args, overrides


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(prog='python -m ssljax.main', description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='configs/<method>.py[:key=value,...]')
    parser.add_argument('--workdir', required=True, help='checkpoints, metrics.jsonl, tb/ and summary.json go here')
    parser.add_argument('--allow-config-changes', action='store_true',
                        help='resume a workdir with a config that differs from the one it was started with '
                             '(the differences are recorded in WORKDIR/config_history.jsonl)')
    return parse_known(parser, argv)


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)

    def train_from_args():
        from ssljax import config_lib, logging_lib, train
        from ssljax import workdir as workdir_lib
        config = config_lib.load_config_with_overrides(args.config, overrides, log=logging_lib.info)
        workdir_lib.check_workdir(args.workdir)
        train.train_and_evaluate(config, args.workdir, allow_config_changes=args.allow_config_changes)

    return run_reporting_errors(train_from_args)


def run_reporting_errors(fn) -> int:
    """Runs ``fn()``; a failure prints one line ``ssljax: error: ...`` and returns the exit code (0 on success)."""
    from ssljax import config_lib
    from ssljax import workdir as workdir_lib
    usage_errors = (config_lib.ConfigError, FileNotFoundError, workdir_lib.WorkdirError)
    try:
        fn()
    except (*usage_errors, ValueError, KeyError, RuntimeError, OSError) as e:
        if os.environ.get('SSLJAX_TRACEBACK'):
            raise
        hint = '' if isinstance(e, usage_errors) else ' (SSLJAX_TRACEBACK=1 shows where)'
        print(f'ssljax: error: {_one_line(e)}{hint}', file=sys.stderr)
        return 2 if isinstance(e, usage_errors) else 1
    except KeyboardInterrupt:
        if os.environ.get('SSLJAX_TRACEBACK'):
            raise
        print('ssljax: interrupted (KeyboardInterrupt); checkpoints already written are kept: rerun the same command '
              'to resume from the latest', file=sys.stderr)
        return 130
    return 0


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    if isinstance(error, KeyError) or not text:  # str(KeyError('x')) is "'x'": say what it is
        text = f'{type(error).__name__}: {text}'
    return text


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
