"""Runs several methods at one equal budget and writes a markdown table of their summaries.

    python experiments/run_table.py --methods 'directpred directpred:predictor=linear byol' --out OUT \
        [--config.KEY=VALUE ...]

Each method runs ``python -m ssljax.main --config configs/<method>.py --workdir OUT/<method> [overrides]`` in its own
process (so a crash of one does not stop the others), and the table (OUT/table.md) lists kNN and linear-probe top-1
against the same encoder at random init, wall time and train samples/s, with the exact command of every row.
A method whose run fails gets a row saying so, with the last line of its error.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workdir_name(spec: str) -> str:
    return spec.replace(':', '-').replace('=', '-').replace(',', '-')


def run_method(spec: str, out: str, overrides: list[str], config_arg: str) -> dict:
    """``spec`` is a config name with optional variant args, e.g. ``directpred:predictor=linear``."""
    name, _, spec_arg = spec.partition(':')
    method = spec
    workdir = os.path.join(out, workdir_name(spec))
    arg = ','.join(filter(None, [config_arg, spec_arg]))
    config = f'configs/{name}.py' + (f':{arg}' if arg else '')
    cmd = [sys.executable, '-m', 'ssljax.main', f'--config={config}', f'--workdir={workdir}', *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'log.txt'), 'w') as f:
        f.write(proc.stdout + proc.stderr)
    command = 'python -m ssljax.main ' + ' '.join(cmd[3:])
    summary_path = os.path.join(workdir, 'summary.json')
    if proc.returncode != 0 or not os.path.exists(summary_path):
        error = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
        return {'method': method, 'error': error, 'command': command, 'wall_s': round(time.time() - t0, 1)}
    summary = json.load(open(summary_path))
    summary.update(method=spec, command=command)
    return summary


def pct(x) -> str:
    return '-' if x is None else f'{100 * x:.1f}'


def write_table(rows: list[dict], out: str, title: str) -> str:
    lines = [f'# {title}', '',
             '| method | kNN top-1 | linear top-1 | online probe | random-init kNN | random-init linear | final loss '
             '| steps | wall s | train samples/s |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["method"]} | failed: {r["error"]} | | | | | | | {r["wall_s"]} | |')
            continue
        lines.append(f'| {r["method"]} | {pct(r["knn_top1"])} | {pct(r["linear_top1"])} | '
                     f'{pct(r.get("online_probe_top1"))} | {pct(r["random_init_knn_top1"])} | '
                     f'{pct(r["random_init_linear_top1"])} | {r["final_loss"]:.4f} | {r["steps"]} | {r["wall_s"]} | '
                     f'{r["train_samples_per_s"]:.0f} |')
    lines += ['', 'Commands (run from the repository root):', '']
    lines += [f'- {r["method"]}: `{r["command"]}`' for r in rows]
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'table.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(out, 'rows.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--methods', required=True,
                        help='space-separated config names under configs/, each optionally NAME:key=value,...')
    parser.add_argument('--out', required=True)
    parser.add_argument('--config-arg', default='', help='variant argument passed to every config (after the colon)')
    parser.add_argument('--title', default='Methods at one equal budget')
    parser.add_argument('--rebuild', action='store_true',
                        help='only rebuild OUT/table.md from the runs already in OUT (their summary.json and logs)')
    args, overrides = parser.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    if args.rebuild:
        old = {r['command']: r for r in json.load(open(os.path.join(args.out, 'rows.json')))}
        for spec in args.methods.split():
            row = next(r for cmd, r in old.items() if f'--workdir={os.path.join(args.out, workdir_name(spec))} ' in cmd + ' ')
            rows.append(dict(row, method=spec))
        print(write_table(rows, args.out, args.title))
        return
    for method in args.methods.split():
        print(f'== {method}', flush=True)
        rows.append(run_method(method, args.out, overrides, args.config_arg))
        print(json.dumps({k: rows[-1].get(k) for k in ('method', 'knn_top1', 'linear_top1', 'wall_s', 'error')}),
              flush=True)
        write_table(rows, args.out, args.title)
    print(write_table(rows, args.out, args.title))


if __name__ == '__main__':
    main()
