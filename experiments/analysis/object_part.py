"""Object- vs part-level recognition of several runs: a table and a grouped bar plot.

    python experiments/analysis/object_part.py --tables T1/table.json [T2/table.json ...] --out DIR \
        [--evaluator part] [--baseline RUN_DIR] [--title ...]

Reads the rows of ``python -m ssljax.reproduce`` tables (``table.json``; values that ``python -m ssljax.evaluate``
added to a finished run, e.g. ``--config.evals.part.type=part_probe --only part``, are part of the rows) and writes
DIR/object_part.md and DIR/object_part.png: for every method the whole-image and the part-level linear-probe top-1
of the ``part_probe`` evaluator named ``--evaluator``, the ratio part / whole, and, with ``--baseline`` (a run
whose random-init baseline included that evaluator), the same numbers for the encoder at random initialisation.
"""

from __future__ import annotations

import argparse
import json
import os


def rows_of(tables: list[str], evaluator: str) -> list[dict]:
    rows = []
    for path in tables:
        for row in json.load(open(path))['rows']:
            s = row.get('summary') or {}
            whole, part = s.get(f'{evaluator}_whole_top1'), s.get(f'{evaluator}_part_top1')
            if whole is not None and part is not None:
                rows.append(dict(method=row['method'], whole=float(whole), part=float(part), table=path))
    return rows


def baseline_of(run: str, evaluator: str) -> dict | None:
    if not run:
        return None
    s = json.load(open(os.path.join(run, 'summary.json')))
    whole, part = s.get(f'random_init_{evaluator}_whole_top1'), s.get(f'random_init_{evaluator}_part_top1')
    return None if whole is None or part is None else dict(method='random init', whole=whole, part=part)


def write(rows: list[dict], baseline: dict | None, out: str, title: str, command: str) -> None:
    from matplotlib.figure import Figure

    os.makedirs(out, exist_ok=True)
    lines = [f'# {title}', '', '| method | whole-image top-1 | part-level top-1 | part / whole |', '|---|---|---|---|']
    for r in rows + ([baseline] if baseline else []):
        lines.append(
            f"| {r['method']} | {100 * r['whole']:.1f} | {100 * r['part']:.1f} | {r['part'] / r['whole']:.3f} |"
        )
    lines += ['', f'Made by `{command}`.', '']
    with open(os.path.join(out, 'object_part.md'), 'w') as f:
        f.write('\n'.join(lines))
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 2), 3.8))
    ax = fig.subplots()
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [100 * r['whole'] for r in rows], 0.4, label='whole image')
    ax.bar([i + 0.2 for i in x], [100 * r['part'] for r in rows], 0.4, label='part (10-30% of the area)')
    if baseline:
        ax.axhline(100 * baseline['whole'], color='tab:blue', ls='--', lw=1, label='random init, whole')
        ax.axhline(100 * baseline['part'], color='tab:orange', ls='--', lw=1, label='random init, part')
    ax.set_xticks(list(x), [r['method'] for r in rows], rotation=45, ha='right', fontsize=8)
    ax.set_ylabel('linear probe top-1 (%)')
    ax.set_ylim(0, 125)  # room for the legend above the bars
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc='upper center')
    ax.grid(True, axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'object_part.png'), dpi=110)


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--tables', nargs='+', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--evaluator', default='part')
    p.add_argument('--baseline', default='')
    p.add_argument('--title', default='Object- vs part-level linear probe')
    args = p.parse_args()
    rows = rows_of(args.tables, args.evaluator)
    if not rows:
        raise SystemExit(f'no row of {args.tables} has {args.evaluator}_whole_top1 and {args.evaluator}_part_top1')
    command = 'python experiments/analysis/object_part.py ' + ' '.join(sys.argv[1:])
    write(rows, baseline_of(args.baseline, args.evaluator), args.out, args.title, command)
    print(f'{len(rows)} methods -> {args.out}/object_part.md, object_part.png')


if __name__ == '__main__':
    main()
