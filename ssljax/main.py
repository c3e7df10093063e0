"""Command line: python -m ssljax.main --config configs/<method>.py[:args] --workdir DIR [--config.KEY=VALUE ...]

A run that cannot start or cannot go on ends with one line naming the problem and a non-zero exit
(set SSLJAX_TRACEBACK=1 for the full traceback); checkpoints already written are never touched.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(prog='python -m ssljax.main', description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='configs/<method>.py[:key=value,...]')
    parser.add_argument('--workdir', required=True, help='checkpoints, metrics.jsonl, tb/ and summary.json go here')
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
        config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
        from ssljax import train
        train.train_and_evaluate(config, args.workdir)
    except (config_lib.ConfigError, ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        if os.environ.get('SSLJAX_TRACEBACK'):
            raise
        hint = '' if isinstance(e, (config_lib.ConfigError, FileNotFoundError)) else ' (SSLJAX_TRACEBACK=1 shows where)'
        print(f'ssljax: error: {e}{hint}', file=sys.stderr)
        return 2 if isinstance(e, (config_lib.ConfigError, FileNotFoundError)) else 1
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
