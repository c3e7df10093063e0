"""Several methods at one equal budget, one table: python -m ssljax.reproduce --methods '...' --out DIR

    python -m ssljax.reproduce --methods 'simclr mocov2 directpred:predictor=linear' --out workdirs/T \
        [--config-arg ARG] [--config.KEY=VALUE ...] [--title TEXT] [--rerun] [--table-only] \
        [--columns KEY,...] [--export DIR]

Each method spec is a config under ``configs/`` (or a path to a config file) with optional variant arguments after a
colon and optional overrides of its own after ``@`` (``simclr@objective.temperature=0.5@seed=1``: an ablation is one
spec per value). It runs as ``python -m ssljax.main --config=configs/<name>.py[:<config-arg>,<args>]
--workdir=DIR/<spec> [--config.KEY=VALUE ...] [its own --config.KEY=VALUE ...]`` in its own process, so a crash of
one method does not stop the others. The child's output goes to ``DIR/<spec>/log.txt`` (appended, one header per
attempt) and to this console; what the run was (command, exit code, last error line, date, machine, load average
before and after) to ``DIR/<spec>/reproduce.json``.

A method whose workdir already holds a finished ``summary.json`` is skipped (``--rerun`` moves that workdir aside to
``<workdir>.replaced-<date>`` and runs it again); one that was interrupted resumes from its latest checkpoint, since
``ssljax.main`` does. Rerunning the same command after an interruption therefore finishes the table.

Written after every method (so a partial table is always there) and at the end:
  - ``DIR/table.md``: one row per method: kNN and linear-probe top-1, the online probe, fine-tune top-1 and the
    reconstruction error (``finetune_top1``, ``reconstruction_error``), part- and whole-level top-1 (keys ending in
    ``_part_top1`` / ``_whole_top1``), the keys named by ``--columns``, the random-init baseline of the same encoder,
    final loss, steps, wall time, train samples/s, and a link to the run's last reconstruction grid (copied to
    ``DIR/figures/<workdir>_grid.png``); every optional column appears only when some run has it. A failed run's row
    carries its last error line; below the table, the exact command of every row, when it ran and the load average
    around it; above it, the machine (CPU cores, device kind) and the date.
  - ``DIR/table.json``: the same as data (every row's full summary.json included).
  - ``DIR/table.png``: kNN and linear top-1 per method as bars, each run's random-init value as a line over its bar.
``--table-only`` rebuilds the three files from the workdirs already in DIR without running anything (the methods of
``--methods``, else those of the last table.json, else every workdir found in DIR). ``--export DIR2`` writes them
(and the grids) to DIR2 as well, e.g. into experiments/ where they are committed.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = 'reproduce.json'
LOG = 'log.txt'
PART_SUFFIX, WHOLE_SUFFIX = '_part_top1', '_whole_top1'
# summary keys shown (after kNN and linear) when some row has them: (key, header)
OPTIONAL = (
    ('online_probe_top1', 'online probe'),
    ('finetune_top1', 'fine-tune top-1'),
    ('reconstruction_error', 'recon. error'),
)


# =====================================================================================================================
# Specs, workdirs and commands
# =====================================================================================================================
def parse_spec(spec: str) -> tuple[str, str, list[str]]:
    """'simclr:dataset=mnist@objective.temperature=0.5@seed=1' -> ('simclr', 'dataset=mnist',
    ['objective.temperature=0.5', 'seed=1']): config name or path, its variant arguments, this method's own
    overrides (``--config.KEY=VALUE`` for this row only, after the ones shared by every row)."""
    head, *own = spec.split('@')
    name, _, arg = head.partition(':')
    bad = [o for o in own if '=' not in o]
    if not name or bad:
        raise ValueError(f'method spec {spec!r} is not NAME[:key=value,...][@KEY=VALUE...]')
    return name, arg, own


def workdir_name(spec: str) -> str:
    """'directpred:predictor=linear' -> 'directpred-predictor-linear', 'simclr@objective.temperature=0.5' ->
    'simclr-objective.temperature-0.5' (a config path contributes its file stem)."""
    name, arg, own = parse_spec(spec)
    if name.endswith('.py'):
        name = os.path.splitext(os.path.basename(name))[0]
    text = '-'.join(filter(None, [name, arg, *own]))
    return text.replace(':', '-').replace('=', '-').replace(',', '-').replace('/', '-')


def config_path(name: str) -> str:
    """A method name -> ``configs/<name>.py`` (relative to the repository root); a ``.py`` path is kept as it is."""
    return name if name.endswith('.py') else f'configs/{name}.py'


def display_path(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it (commands are run from there), else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, REPO)
    return absolute if relative.startswith('..') else relative


def build_command(spec: str, workdir: str, config_arg: str = '', overrides=()) -> list[str]:
    """The argv after ``python`` that runs ``spec`` into ``workdir`` (``overrides``: 'KEY=VALUE' strings shared by
    every method; the spec's own ``@KEY=VALUE`` come after them, so they win)."""
    name, spec_arg, own = parse_spec(spec)
    arg = ','.join(filter(None, [config_arg, spec_arg]))
    config = config_path(name) + (f':{arg}' if arg else '')
    return [
        '-m',
        'ssljax.main',
        f'--config={config}',
        f'--workdir={display_path(workdir)}',
        *(f'--config.{o}' for o in [*overrides, *own]),
    ]


def command_text(argv_after_python: list[str]) -> str:
    """The shell command a person types from the repository root."""
    return 'python ' + ' '.join(shlex.quote(a) for a in argv_after_python)


# =====================================================================================================================
# Running one method
# =====================================================================================================================
def now_text() -> str:
    return datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z').strip()


def load_average() -> float | None:
    """The 1-minute load average of this machine (None where the OS does not say)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def probe_devices(timeout: float = 120.0) -> dict:
    """{'platform', 'device_kind', 'device_count'} of the JAX backend a child run will see, asked in a separate
    process (this process never starts a backend, so it holds no accelerator memory the runs need)."""
    code = (
        'import json, jax; d = jax.devices(); print("DEVICES", json.dumps({"platform": d[0].platform, '
        '"device_kind": d[0].device_kind, "device_count": len(d)}))'
    )
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
    try:
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout, env=env)
        return json.loads(r.stdout.split('DEVICES', 1)[1])
    except (subprocess.SubprocessError, IndexError, ValueError, OSError):
        return {'platform': 'unknown', 'device_kind': 'unknown', 'device_count': 0}


def machine_info(devices: dict) -> dict:
    return {'cpu_count': os.cpu_count(), **devices}


def read_json(path: str):
    """The JSON in ``path``, or None when it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def finished(workdir: str) -> dict | None:
    """The summary.json of the run in ``workdir`` when it finished (it is written last), else None."""
    summary = read_json(os.path.join(workdir, 'summary.json'))
    return summary if isinstance(summary, dict) and 'steps' in summary else None


def last_error_line(text: str, returncode: int) -> str:
    """The line that says why a run failed: its last ``ssljax: error`` line, else its last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('ssljax: error') or line.startswith('ssljax: interrupted')]
    if errors:
        return errors[-1]
    if returncode < 0:
        return f'killed by signal {-returncode}'
    return lines[-1] if lines else f'exit code {returncode}, no output'


def move_aside(workdir: str) -> str:
    """Renames ``workdir`` to ``<workdir>.replaced-<date>`` (nothing is deleted) and returns the new name."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    target, n = f'{workdir}.replaced-{stamp}', 1
    while os.path.exists(target):
        n += 1
        target = f'{workdir}.replaced-{stamp}-{n}'
    os.rename(workdir, target)
    return target


def run_method(spec: str, workdir: str, argv: list[str], machine: dict, echo: bool = True) -> dict:
    """Runs ``python argv`` from the repository root, its output appended to ``workdir/log.txt`` (and echoed);
    writes and returns the record ``workdir/reproduce.json``, whose ``attempts`` lists every attempt of this command
    in this workdir (date, wall s, exit code: a run resumed after an interruption has several; summary.json's wall_s
    counts only the last)."""
    os.makedirs(workdir, exist_ok=True)
    previous = read_json(os.path.join(workdir, RECORD)) or {}
    command = command_text(argv)
    record = {
        'method': spec,
        'command': command,
        'date': now_text(),
        'machine': dict(machine),
        'load_start': load_average(),
    }
    start = time.time()
    output: list[str] = []
    with open(os.path.join(workdir, LOG), 'a') as log:
        log.write(f'=== {record["date"]}: {command}\n')
        log.flush()
        # unbuffered: a pipe would otherwise hold the child's progress lines until it exits
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, 'PYTHONUNBUFFERED': '1'},
        )
        try:
            for line in proc.stdout:
                log.write(line)
                output.append(line)
                if echo:
                    print(f'  {line}', end='', flush=True)
            returncode = proc.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C and saves its checkpoint: let it finish
            for line in proc.stdout:  # (reading on, so that a full pipe never blocks it)
                log.write(line)
                output.append(line)
            returncode = proc.wait()
            if returncode == 0:
                returncode = 130
    record.update(
        returncode=returncode,
        wall_s=round(time.time() - start, 2),
        load_end=load_average(),
        error=None if returncode == 0 else last_error_line(''.join(output), returncode),
    )
    earlier = previous.get('attempts', []) if previous.get('command') == command else []
    record['attempts'] = [*earlier, {k: record[k] for k in ('date', 'wall_s', 'returncode')}]
    _write_json(os.path.join(workdir, RECORD), record)
    return record


def _write_json(path: str, payload) -> None:
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(payload, f, indent=2, allow_nan=False, default=str)
        f.write('\n')
    os.replace(tmp, path)


# =====================================================================================================================
# Rows and the table
# =====================================================================================================================
def collect_row(spec: str, workdir: str, planned: str | None = None) -> dict:
    """What the table shows for ``spec``: status 'ok' (a finished summary.json), 'failed' (the last attempt's
    record says so) or 'missing' (not run, or still running / interrupted). ``command``: the one recorded when it
    ran, else ``planned`` (the one that would run it), else None."""
    record = read_json(os.path.join(workdir, RECORD)) or {}
    row = {
        'method': spec,
        'workdir': display_path(workdir),
        'record': record,
        'command': record.get('command') or planned,
    }
    summary = finished(workdir)
    if summary is not None:
        return dict(row, status='ok', grid=last_grid(workdir), summary=with_later_evaluations(workdir, summary))
    if record.get('returncode') not in (None, 0):
        return dict(row, status='failed', error=record.get('error') or 'failed', summary={})
    return dict(row, status='missing', summary={})


def with_later_evaluations(workdir: str, summary: dict) -> dict:
    """``summary`` plus the values ``python -m ssljax.evaluate`` wrote later for the run's final step
    (``eval_<steps>.json``, e.g. part-level numbers added to a finished run); the summary's own values win."""
    later = read_json(os.path.join(workdir, f'eval_{summary.get("steps")}.json')) or {}
    return {**{k: v for k, v in later.items() if k != 'step'}, **summary}


def last_grid(workdir: str) -> str | None:
    """The reconstruction grid of the run's latest evaluation (``figures/<name>_grid_<step>.png``), if any."""

    def step(path):
        found = re.search(r'_grid_(\d+)\.png$', path)
        return int(found.group(1)) if found else -1

    grids = sorted(glob.glob(os.path.join(workdir, 'figures', '*_grid_*.png')), key=step)
    return grids[-1] if grids else None


def grid_link(row: dict) -> str:
    """Where the table's directory keeps ``row``'s grid (write_outputs copies it there)."""
    return f'figures/{os.path.basename(row["workdir"].rstrip(os.sep))}_grid.png'


def pct(x) -> str:
    return '-' if x is None else f'{100 * x:.1f}'


def number(x, fmt: str) -> str:
    return '-' if x is None else format(x, fmt)


def _prefix(key: str) -> str:
    for suffix in (PART_SUFFIX, WHOLE_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _fmt(key: str):
    return pct if key.endswith('_top1') else (lambda x: number(x, '.4g'))


def columns(rows: list[dict], extra=()) -> list[tuple[str, object]]:
    """(header, cell function of a row) of every column; the optional ones (``extra`` summary keys, the
    reconstruction grid) only when some row has them."""
    summaries = [r['summary'] for r in rows if r['status'] == 'ok']
    keys = set().union(*(s.keys() for s in summaries)) if summaries else set()
    part_keys = sorted(
        (k for k in keys if k.endswith((PART_SUFFIX, WHOLE_SUFFIX)) and not k.startswith('random_init_')),
        key=lambda k: (_prefix(k), not k.endswith(WHOLE_SUFFIX)),
    )

    def value(key, fmt=pct):
        return lambda r: fmt(r['summary'].get(key))

    def part_header(key):
        level = 'whole' if key.endswith(WHOLE_SUFFIX) else 'part'
        return f'{_prefix(key)} {level}-level top-1'

    cols = [('kNN top-1', value('knn_top1')), ('linear top-1', value('linear_top1'))]
    cols += [(header, value(key, _fmt(key))) for key, header in OPTIONAL if key in keys]
    cols += [(part_header(k), value(k)) for k in part_keys]
    cols += [(key, value(key, _fmt(key))) for key in extra if key in keys]
    cols += [
        ('random-init kNN', value('random_init_knn_top1')),
        ('random-init linear', value('random_init_linear_top1')),
    ]
    cols += [
        (f'random-init {part_header(k)}', value(f'random_init_{k}')) for k in part_keys if f'random_init_{k}' in keys
    ]
    cols += [
        ('final loss', value('final_loss', lambda x: number(x, '.4f'))),
        ('steps', value('steps', lambda x: number(x, 'd'))),
        ('wall s', value('wall_s', lambda x: number(x, '.1f'))),
        ('train samples/s', value('train_samples_per_s', lambda x: number(x, '.0f'))),
    ]
    if any(r.get('grid') for r in rows):
        cols.append(('grid', lambda r: f'[png]({grid_link(r)})' if r.get('grid') else '-'))
    return cols


def _cell(text) -> str:
    """Markdown table cell: pipes escaped, one line."""
    return ' '.join(str(text).replace('|', '\\|').split())


def _load_text(record: dict) -> str:
    a, b = record.get('load_start'), record.get('load_end')
    return f'load average {a} at start, {b} at end' if a is not None or b is not None else 'load not recorded'


def machine_lines(rows: list[dict]) -> list[str]:
    """One line on the machine(s) and dates the rows ran on, from their records."""
    records = [r['record'] for r in rows if r['record']]
    if not records:
        return ['Machine: not recorded (no row was run by ssljax.reproduce).']
    kinds = []
    for rec in records:
        m = rec.get('machine', {})
        text = (
            f'{m.get("cpu_count", "?")} CPU cores, {m.get("device_count", "?")} x {m.get("device_kind", "?")} '
            f'({m.get("platform", "?")})'
        )
        if text not in kinds:
            kinds.append(text)
    dates = sorted(rec.get('date', '') for rec in records)
    when = dates[0] if dates[0] == dates[-1] else f'{dates[0]} to {dates[-1]}'
    return [
        f'Machine: {"; ".join(kinds)}. Runs started {when} (each row\'s date and the 1-minute load average '
        f'before and after it are listed with its command).'
    ]


def make_table(rows: list[dict], title: str, extra=()) -> tuple[str, list[dict]]:
    """-> (markdown text, rows as data with their cells)."""
    cols = columns(rows, extra)
    headers = ['method'] + [h for h, _ in cols]
    lines = [f'# {title}', '', *machine_lines(rows), '', '| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    data = []
    for r in rows:
        if r['status'] == 'ok':
            cells = [fn(r) for _, fn in cols]
        else:
            cells = [''] * len(cols)
            cells[0] = f'failed: {r["error"]}' if r['status'] == 'failed' else 'not run (or not finished)'
            wall = r['record'].get('wall_s') if r['status'] == 'failed' else None
            if wall is not None:  # how long the failed attempt took
                cells[headers.index('wall s') - 1] = number(wall, '.1f')
        lines.append('| ' + ' | '.join(_cell(c) for c in [r['method'], *cells]) + ' |')
        data.append({**{k: v for k, v in r.items() if k != 'grid'}, 'cells': dict(zip(headers, [r['method'], *cells]))})
    lines += ['', 'Commands (run from the repository root):', '']
    for r in rows:
        rec = r['record']
        if r['command'] is None and r['status'] == 'missing':
            lines.append(f'- {r["method"]}: not run')
            continue
        if r['command'] is None:
            lines.append(
                f'- {r["method"]}: command not recorded (its workdir {r["workdir"]} was not made by ssljax.reproduce)'
            )
            continue
        attempts = rec.get('attempts', [])
        tries = (
            f'; {len(attempts)} attempts, {sum(a["wall_s"] for a in attempts):.0f} s in all'
            if len(attempts) > 1
            else ''
        )
        when = f' ({rec.get("date")}, {_load_text(rec)}{tries})' if rec else ' (not run yet)'
        lines.append(f'- {r["method"]}: `{r["command"]}`{when}')
    return '\n'.join(lines) + '\n', data


def plot_table(rows: list[dict], path: str, title: str) -> None:
    """Bars of kNN and linear top-1 per method; each run's random-init value as a dashed line over its bar."""
    import numpy as np
    from matplotlib.figure import Figure  # not pyplot: no backend chosen, a notebook's own is left alone

    n = len(rows)
    fig = Figure(figsize=(max(5.0, 1.1 * n + 2), 4.2))
    ax = fig.subplots()
    width = 0.38
    kinds = (
        ('knn_top1', 'kNN top-1', 'tab:blue', -width / 2),
        ('linear_top1', 'linear top-1', 'tab:orange', width / 2),
    )
    labelled = set()
    for i, r in enumerate(rows):
        s = r['summary']
        if r['status'] != 'ok':
            ax.text(
                i,
                2,
                'failed' if r['status'] == 'failed' else 'not run',
                ha='center',
                va='bottom',
                rotation=90,
                color='tab:red',
            )
            continue
        for key, label, color, dx in kinds:
            if s.get(key) is not None:
                value = 100 * s[key]
                ax.bar(i + dx, value, width, color=color, label=None if label in labelled else label)
                ax.text(i + dx, value + 0.5, f'{value:.1f}', ha='center', va='bottom', fontsize=7)
                labelled.add(label)
            base = s.get(f'random_init_{key}')
            if base is not None:
                ax.hlines(
                    100 * base,
                    i + dx - width / 2,
                    i + dx + width / 2,
                    colors='k',
                    linestyles='--',
                    lw=1.5,
                    label=None if 'random' in labelled else 'random init (same encoder)',
                )
                labelled.add('random')
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels([r['method'] for r in rows], rotation=30, ha='right', fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title, fontsize=10)
    if labelled:
        ax.legend(fontsize=8, loc='upper center', ncol=3, frameon=False)
    ax.grid(True, axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(rows: list[dict], out: str, title: str, extra=()) -> str:
    """Writes OUT/table.md, OUT/table.json, OUT/table.png and the rows' grids in OUT/figures; returns the
    markdown."""
    os.makedirs(out, exist_ok=True)
    for r in rows:
        if r.get('grid'):
            os.makedirs(os.path.join(out, 'figures'), exist_ok=True)
            shutil.copyfile(r['grid'], os.path.join(out, grid_link(r)))
    text, data = make_table(rows, title, extra)
    with open(os.path.join(out, 'table.md'), 'w') as f:
        f.write(text)
    _write_json(os.path.join(out, 'table.json'), {'title': title, 'built': now_text(), 'rows': data})
    plot_table(rows, os.path.join(out, 'table.png'), title)
    return text


def discover_methods(out: str) -> list[str]:
    """The methods of OUT/table.json, else every workdir in OUT that a run left (summary.json or reproduce.json)."""
    table = read_json(os.path.join(out, 'table.json'))
    if isinstance(table, dict) and table.get('rows'):
        return [r['method'] for r in table['rows']]
    found = []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        path = os.path.join(out, name)
        if os.path.isdir(path) and '.replaced-' not in name:
            record = read_json(os.path.join(path, RECORD)) or {}
            if record.get('method') or os.path.exists(os.path.join(path, 'summary.json')):
                found.append(record.get('method') or name)
    return found


# =====================================================================================================================
# The table run
# =====================================================================================================================
def reproduce(
    methods: list[str],
    out: str,
    config_arg: str = '',
    overrides=(),
    title: str = 'Methods at one equal budget',
    rerun: bool = False,
    table_only: bool = False,
    echo: bool = True,
    extra=(),
    export: str | None = None,
) -> list[dict]:
    """Runs every method not yet finished in ``out`` (all of them with ``rerun``; none with ``table_only``), then
    writes the table (to ``export`` too, when given; ``extra``: summary keys shown as further columns); returns its
    rows. Stops after a method that was interrupted (exit 130), table written."""
    os.makedirs(out, exist_ok=True)
    if not methods:
        methods = discover_methods(out)
        if not methods:
            raise FileNotFoundError(f'no methods given and no runs found in {out}')
    workdirs = {spec: os.path.join(out, workdir_name(spec)) for spec in methods}
    if len(set(workdirs.values())) != len(workdirs):
        raise ValueError(f'two methods of {methods} would share a workdir; give each a distinct spec')
    planned = (
        {}
        if table_only
        else {spec: command_text(build_command(spec, workdirs[spec], config_arg, overrides)) for spec in methods}
    )
    machine = None
    interrupted = False
    for spec in methods:
        workdir = workdirs[spec]
        argv = build_command(spec, workdir, config_arg, overrides)
        if table_only or interrupted:
            continue
        if finished(workdir) and not rerun:
            recorded = (read_json(os.path.join(workdir, RECORD)) or {}).get('command')
            note = (
                ''
                if recorded in (None, command_text(argv))
                else (f'; note: it was made by `{recorded}`, not by this command (--rerun runs this one)')
            )
            print(f'== {spec}: finished in {workdir} (summary.json), kept{note}', flush=True)
            continue
        if rerun and finished(workdir):
            print(f'== {spec}: --rerun: moved the finished run to {move_aside(workdir)}', flush=True)
        if machine is None:
            machine = machine_info(probe_devices())
        print(f'== {spec}: {command_text(argv)}', flush=True)
        record = run_method(spec, workdir, argv, machine, echo=echo)
        status = 'ok' if record['returncode'] == 0 else f'failed: {record["error"]}'
        print(f'== {spec}: {status} ({record["wall_s"]:.0f} s)', flush=True)
        interrupted = record['returncode'] == 130
        write_outputs([collect_row(s, workdirs[s], planned.get(s)) for s in methods], out, title, extra)
    rows = [collect_row(s, workdirs[s], planned.get(s)) for s in methods]
    print(write_outputs(rows, out, title, extra), flush=True)
    if export:
        write_outputs(rows, export, title, extra)
        print(f'== table, plot and grids also written to {export}', flush=True)
    if interrupted:
        raise KeyboardInterrupt
    return rows


def parse_args(argv: list[str]):
    from ssljax import cli
    from ssljax.cli import parse_known

    parser = argparse.ArgumentParser(prog=cli.prog('python -m ssljax.reproduce'), description=__doc__.splitlines()[0])
    parser.add_argument(
        '--methods',
        default='',
        help="space-separated specs: a config name under configs/ (or a config file path), "
        "optionally NAME:key=value,... and @KEY=VALUE overrides of that method alone, e.g. "
        "'simclr mocov2 directpred:predictor=linear simclr@objective.temperature=0.5'",
    )
    parser.add_argument('--out', required=True, help='one workdir per method goes here, and table.md/json/png')
    parser.add_argument('--config-arg', default='', help='variant argument passed to every config (after the colon)')
    parser.add_argument('--title', default='Methods at one equal budget')
    parser.add_argument(
        '--rerun',
        action='store_true',
        help='run methods again even when their workdir has a finished summary.json (the old '
        'workdir is renamed <workdir>.replaced-<date>, not deleted)',
    )
    parser.add_argument(
        '--table-only',
        action='store_true',
        help='run nothing: rebuild table.md/json/png from the workdirs already in --out',
    )
    parser.add_argument('--quiet', action='store_true', help="do not echo the runs' output (it is in log.txt)")
    parser.add_argument(
        '--columns',
        default='',
        help='comma-separated summary keys shown as further columns when some run has them, e.g. '
        'finetune15_top1 (a value python -m ssljax.evaluate added later)',
    )
    parser.add_argument(
        '--export', default=None, help='also write table.md/json/png and the reconstruction grids to this directory'
    )
    args, overrides = parse_known(parser, argv)
    if not args.methods.split() and not args.table_only:
        parser.error('--methods is required (unless --table-only)')
    return args, overrides


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    from ssljax.cli import run_reporting_errors

    return run_reporting_errors(
        lambda: reproduce(
            args.methods.split(),
            args.out,
            args.config_arg,
            overrides,
            args.title,
            rerun=args.rerun,
            table_only=args.table_only,
            echo=not args.quiet,
            extra=tuple(filter(None, args.columns.split(','))),
            export=args.export,
        )
    )


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
