"""What every command line shares: ``--config.KEY=VALUE`` parsing and one-line error reporting.

The entry points (``python -m ssljax.main``, ``ssljax.evaluate``, ``ssljax.export``, ``ssljax.plot``,
``ssljax.cka``, ``ssljax.reproduce``, ``ssljax.bench``, all reachable as subcommands of the one ``ssljax`` command in
``ssljax.commands``) are the top layer of the package; each parses its own flags (``--kebab-case``)
and hands the rest to :func:`parse_known`, then runs its work through :func:`run_reporting_errors`, so that a run
that cannot start or cannot go on ends with one line ``ssljax: error: ...`` and a non-zero exit (set
``SSLJAX_TRACEBACK=1`` for the full traceback); checkpoints already written are never touched.

Exit codes: 2 for a config, file or workdir problem (checked before anything runs), 1 for other errors, 130 when
interrupted (a KeyboardInterrupt that escaped the train loop's own Ctrl-C handling, e.g. a second Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

_PROG: str | None = None  # set by the ``ssljax`` command: 'ssljax train' instead of 'python -m ssljax.main'


def prog(default: str) -> str:
    """The program name a parser shows: ``ssljax SUBCOMMAND`` when run through the ``ssljax`` command, else
    ``default`` (``python -m ssljax.X``)."""
    return _PROG or default


def set_prog(name: str | None) -> None:
    global _PROG
    _PROG = name


def parse_known(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """-> (args, overrides): every argument the parser does not know must be ``--config.KEY=VALUE``."""
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith('--config.'):
            parser.error(f'unrecognised argument {item!r} (overrides are --config.KEY=VALUE)')
        overrides.append(item[len('--config.') :])
    return args, overrides


def run_reporting_errors(fn: Callable[[], object]) -> int:
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
        print(f'ssljax: error: {one_line(e)}{hint}', file=sys.stderr)
        return 2 if isinstance(e, usage_errors) else 1
    except KeyboardInterrupt:
        if os.environ.get('SSLJAX_TRACEBACK'):
            raise
        print(
            'ssljax: interrupted (KeyboardInterrupt); checkpoints already written are kept: rerun the same command '
            'to resume from the latest',
            file=sys.stderr,
        )
        return 130
    return 0


def one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError, or an error without a message, says its type)."""
    text = ' '.join(str(error).split())
    if isinstance(error, KeyError) or not text:  # str(KeyError('x')) is "'x'": say what it is
        text = f'{type(error).__name__}: {text}'
    return text
