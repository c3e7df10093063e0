"""The ``ssljax`` command: one entry point whose subcommands are the package's command lines.

    ssljax train --config simclr --workdir W [--config.KEY=VALUE ...]   (python -m ssljax.main)
    ssljax evaluate | export | plot | reproduce | cka | bench ...      (python -m ssljax.<name>)
    ssljax configs                 the methods, config files, datasets, backbones, evaluators and samplers
    ssljax keys CONFIG             a config's keys with their types, defaults and valid ranges
    ssljax --version

Each subcommand parses its own ``--kebab-case`` flags (``ssljax train --help``); ``python -m ssljax.X`` runs the same
code. This module imports the subcommand's module only when it runs, so ``ssljax --help`` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import os
import sys
from typing import Callable

from ssljax import __version__, cli

# subcommand -> (module, function taking argv and returning an exit code, one line of help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    'train': ('ssljax.main', 'run', 'pretrain and evaluate one run into a workdir'),
    'evaluate': ('ssljax.evaluate', 'run', "score a saved checkpoint with the run's (or added) evaluators"),
    'export': ('ssljax.export', 'run', 'write the encoder as safetensors / npz + JSON, or a PyTorch state_dict'),
    'plot': ('ssljax.plot', 'run', 'training curves, spectrum, RankMe and UMAP figures of one run'),
    'reproduce': ('ssljax.reproduce', 'run', 'run several methods at one budget and write table.md/json/png'),
    'cka': ('ssljax.cka', 'run', 'linear CKA between the layers of two encoders, with a heat map'),
    'bench': ('ssljax.bench', 'main', 'throughput of the full train step (or of the input pipeline alone)'),
    'configs': ('ssljax.commands', 'run_configs', 'list methods, config files, datasets, backbones and evaluators'),
    'keys': ('ssljax.commands', 'run_keys', "list a config's keys with types, defaults and ranges"),
}

USAGE = f"""\
usage: ssljax [--version] [-h] COMMAND [ARGS ...]

Self-supervised pretraining of image encoders in JAX/Flax (ssljax {__version__}).

commands:
{chr(10).join(f'  {name:<10} {entry[2]}' for name, entry in COMMANDS.items())}

`ssljax COMMAND --help` shows a command's flags. Quick start:
  ssljax train --config simclr --workdir W --config.total_steps=2 --config.evals=none   # a smoke run in seconds
  ssljax train --config simclr --workdir workdirs/simclr_mnist                          # the main job (minutes)
  ssljax configs        # what there is;    ssljax keys simclr    # what can be set
"""


def run(argv: list[str]) -> int:
    """Dispatches ``argv`` (without the program name) -> exit code."""
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(USAGE, end='')
        return 0 if argv else 2
    if argv[0] in ('--version', '-V', 'version'):
        print(f'ssljax {__version__}')
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=2, cutoff=0.5)
        hint = f'; did you mean {" or ".join(close)}?' if close else f'; commands: {", ".join(COMMANDS)}'
        print(f'ssljax: error: unknown command {name!r}{hint}', file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    cli.set_prog(f'ssljax {name}')
    try:
        fn: Callable[[list[str]], int | None] = getattr(importlib.import_module(module_name), function)
        code = fn(argv[1:])
    except SystemExit as e:  # argparse's --help and usage errors, bench's exit code
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        cli.set_prog(None)
    return int(code or 0)


def main() -> None:
    """The console script ``ssljax`` (pyproject.toml ``[project.scripts]``)."""
    sys.exit(run(sys.argv[1:]))


# ------------------------------------------------------------------------------------------------- ssljax configs


def _first_line(doc: str | None, width: int = 100) -> str:
    line = (doc or '').strip().splitlines()[0] if (doc or '').strip() else ''
    return line if len(line) <= width else line[: width - 3].rstrip() + '...'


def config_files() -> dict[str, str]:
    """{name: first line of the config file's docstring} for every method config under configs/ (not executed)."""
    from ssljax import config_lib

    out = {}
    for name in config_lib.config_names():
        with open(os.path.join(config_lib.CONFIG_DIR, f'{name}.py')) as f:
            out[name] = _first_line(ast.get_docstring(ast.parse(f.read())))
    return out


def registries() -> dict[str, dict[str, str]]:
    """Every registry by name -> {entry: one line}: methods, datasets, backbones, evaluators, samplers."""
    from ssljax import evaluation
    from ssljax.data import samplers, sources
    from ssljax.models import registry
    from ssljax.objectives import OBJECTIVES

    return {
        'methods (config.method; ssljax.register_objective)': {
            k: _first_line(v.__doc__) for k, v in sorted(OBJECTIVES.items())
        },
        'config files (--config NAME)': config_files(),
        'datasets (config.dataset)': {k: _dataset_line(k, sources) for k in sorted(sources.DATASETS)},
        'backbones (config.model.backbone)': {k: '' for k in sorted(registry.BACKBONES)},
        'evaluators (config.evals.NAME.type)': {
            k: _first_line(v.__doc__) for k, v in sorted(evaluation.EVALUATORS.items())
        },
        'samplers (config.sampler.name)': {k: _first_line(v.__doc__) for k, v in sorted(samplers.SAMPLERS.items())},
    }


def _dataset_line(name: str, sources) -> str:
    shape = sources.DATASET_SHAPES.get(name, {})
    size = shape.get('image_size') or 'from the images'
    classes = shape.get('num_classes') or 'from the folders'
    where = 'embedded, no download' if name in ('mnist', 'digits') else 'needs --config.data_dir'
    return f'image size {size}, classes {classes}; {where}'


def run_configs(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=cli.prog('ssljax configs'), description=_first_line(run_configs.__doc__))
    parser.add_argument('--names-only', action='store_true', help='one name a line, without descriptions')
    args = parser.parse_args(argv)
    for title, entries in registries().items():
        print(f'{title}:')
        for name, line in entries.items():
            print(f'  {name}' if args.names_only or not line else f'  {name:<24} {line}')
        print()
    return 0


run_configs.__doc__ = 'Lists the methods, config files, datasets, backbones, evaluators and samplers.'

# ---------------------------------------------------------------------------------------------------- ssljax keys


def config_keys(config) -> list[tuple[str, str, str, str]]:
    """[(key, type, default, range)] for every leaf key of ``config``, in the config's order."""
    import ml_collections

    from ssljax import config_lib

    rows = []
    for key in config_lib.all_keys(config):
        node = config
        for part in key.split('.'):
            node = node[part]
        if isinstance(node, ml_collections.ConfigDict):
            continue
        numeric = isinstance(node, (int, float)) and not isinstance(node, bool)
        if isinstance(node, (tuple, list)) and node and all(isinstance(v, (int, float)) for v in node):
            numeric = True
        rows.append((key, type(node).__name__, repr(node), (config_lib.range_of(key) or '') if numeric else ''))
    return rows


def keys_table(rows: list[tuple[str, str, str, str]], markdown: bool = False) -> str:
    if markdown:
        lines = ['| key | type | default | range |', '| --- | --- | --- | --- |']
        lines += [f'| `{k}` | {t} | `{d}` | {r} |'.replace('``', '` `') for k, t, d, r in rows]
        return '\n'.join(lines)
    width = max(len(k) for k, *_ in rows)
    return '\n'.join(f'{k:<{width}}  {t:<6} {d}{f"   range {r}" if r else ""}' for k, t, d, r in rows)


def run_keys(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=cli.prog('ssljax keys'),
        description="Lists a config's keys with their types, defaults and valid ranges; set any of them with "
        '--config.KEY=VALUE.',
    )
    parser.add_argument('config', help='a method name (simclr) or config file, optionally with :variant arguments')
    parser.add_argument('--markdown', action='store_true', help='a Markdown table (docs/keys.md is made this way)')
    parser.add_argument('--grep', default='', help='only keys containing this text')
    args, overrides = cli.parse_known(parser, argv)

    def show():
        from ssljax import configure

        config = configure.load_config_with_overrides(args.config, overrides)
        rows = [r for r in config_keys(config) if args.grep in r[0]]
        print(keys_table(rows, markdown=args.markdown) if rows else f'no key contains {args.grep!r}')

    return cli.run_reporting_errors(show)


if __name__ == '__main__':
    main()
