"""The masked-image-modeling table at one equal budget: MAE, SimMIM, contrastive + masked at two weights and the
contrastive-only ViT, each in its own process (experiments/run_table.py's runner), then a markdown table with the
linear probe, fine-tuning, kNN, reconstruction error, wall time and the command of every row, and the reconstruction
grids copied next to it.

    python experiments/masked/run_table.py --out workdirs/masked_table --epochs 5 [--config.KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil

import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def workdir_name(spec: str) -> str:
    return spec.replace(':', '-').replace('=', '-').replace(',', '-')


def pct(x) -> str:
    return '-' if x is None else f'{100 * x:.1f}'


def run_method(spec: str, out: str, overrides: list, config_arg: str) -> dict:
    """``python -m ssljax.main --config configs/<name>.py:<args> --workdir OUT/<spec>`` in its own process."""
    name, _, spec_arg = spec.partition(':')
    workdir = os.path.join(out, workdir_name(spec))
    arg = ','.join(filter(None, [config_arg, spec_arg]))
    cmd = [sys.executable, '-m', 'ssljax.main', f'--config=configs/{name}.py' + (f':{arg}' if arg else ''),
           f'--workdir={workdir}', *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'log.txt'), 'w') as f:
        f.write(proc.stdout + proc.stderr)
    command = 'python -m ssljax.main ' + ' '.join(cmd[3:])
    summary_path = os.path.join(workdir, 'summary.json')
    if proc.returncode != 0 or not os.path.exists(summary_path):
        error = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
        return {'method': spec, 'error': error, 'command': command, 'wall_s': round(time.time() - t0, 1)}
    with open(summary_path) as f:
        summary = json.load(f)
    summary.update(method=spec, command=command)
    return summary


METHODS = ('mae', 'simmim', 'masked_contrastive:weight=0.1', 'masked_contrastive:weight=1.0',
           'masked_contrastive:contrastive_only=true')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    parser.add_argument('--epochs', type=float, default=5.0)
    parser.add_argument('--methods', default=' '.join(METHODS))
    parser.add_argument('--figures', default=os.path.join(HERE, 'figures'))
    args, overrides = parser.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.figures, exist_ok=True)
    rows = []
    for spec in args.methods.split():
        row = run_method(spec, args.out, overrides, f'epochs={args.epochs:g}')
        rows.append(row)
        grids = sorted(glob.glob(os.path.join(args.out, workdir_name(spec), 'figures', 'reconstruction_grid_*.png')))
        if grids:
            target = os.path.join(args.figures, f'{workdir_name(spec)}_grid.png')
            shutil.copyfile(grids[-1], target)
            row['grid'] = os.path.relpath(target, HERE)
        print(json.dumps({k: row.get(k) for k in ('method', 'linear_top1', 'finetune_top1', 'knn_top1', 'wall_s',
                                                  'error')}), flush=True)
        write(rows, args)


def write(rows, args) -> None:
    lines = ['| method | linear top-1 | fine-tune top-1 | kNN top-1 | reconstruction error | final loss | steps | '
             'wall s | train samples/s | grid |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["method"]} | failed: {r["error"]} | | | | | | {r["wall_s"]} | | |')
            continue
        rec = r.get('reconstruction_error')
        lines.append(f'| {r["method"]} | {pct(r["linear_top1"])} | {pct(r.get("finetune_top1"))} | '
                     f'{pct(r["knn_top1"])} | {"-" if rec is None else f"{rec:.3f}"} | {r["final_loss"]:.4f} | '
                     f'{r["steps"]} | {r["wall_s"]} | {r["train_samples_per_s"]:.0f} | '
                     f'{"[png](" + r["grid"] + ")" if r.get("grid") else "-"} |')
    lines += ['', f'Random-init encoder (same architecture): kNN {pct(rows[0].get("random_init_knn_top1"))}, linear '
              f'{pct(rows[0].get("random_init_linear_top1"))}.' if rows and 'error' not in rows[0] else '', '',
              'Commands (from the repository root):', '']
    lines += [f'- {r["method"]}: `{r["command"]}`' for r in rows]
    with open(os.path.join(args.out, 'table.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(args.out, 'rows.json'), 'w') as f:
        json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
