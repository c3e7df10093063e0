"""After a GPU session (on any machine, no device time): the speedrun's files from run.sh's results.

    python experiments/gpu/report.py RESULTS_DIR [--speedrun-out experiments/speedrun]

Reads RESULTS_DIR/results.jsonl (what experiments/gpu/run.sh wrote into $OUT) and writes, into --speedrun-out,
summary.json (the speedrun run's summary, its kNN curve against wall time from the command's start, the plan it was
sized by, the device and the command) and curve.png (kNN top-1 against wall seconds, with the 90% / 10-minute goal).
Prints the table.md rows again. Nothing is written when the results hold no speedrun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='experiments/gpu/report.py')
    parser.add_argument('results')
    parser.add_argument('--speedrun-out', default='experiments/speedrun')
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in open(os.path.join(args.results, 'results.jsonl'))]
    env = next((r for r in rows if r['kind'] == 'env'), {})
    curve = [r for r in rows if r['part'] == 'speedrun' and r['kind'] == 'curve']
    summary = next((r for r in rows if r['part'] == 'speedrun' and r['kind'] == 'summary'), None)
    table = os.path.join(args.results, 'table.md')
    if os.path.exists(table):
        print(open(table).read())
    if not curve:
        print('no speedrun curve in these results: nothing written', file=sys.stderr)
        return 1
    os.makedirs(args.speedrun_out, exist_ok=True)
    keys = ('wall_s', 'step', 'epoch', 'knn_top1', 'online_probe_top1', 'final')
    points = [{k: r.get(k) for k in keys} for r in curve]
    out = dict(
        device=env.get('gpu'),
        packages=env.get('packages'),
        dry_run=env.get('dry_run'),
        command=summary['command'] if summary else None,
        plan=summary.get('plan') if summary else None,
        summary=summary['summary'] if summary else None,
        finished=summary is not None,
        curve=points,
        best_knn_top1=max(p['knn_top1'] for p in points),
    )
    with open(os.path.join(args.speedrun_out, 'summary.json'), 'w') as f:
        json.dump(out, f, indent=1)
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p['wall_s'] for p in points], [100 * p['knn_top1'] for p in points], 'o-', label='ssljax speedrun')
    ax.axhline(90, color='grey', ls='--', lw=1, label='goal: 90% kNN')
    ax.axvline(600, color='grey', ls=':', lw=1, label='10 minutes')
    ax.set_xlabel('wall seconds from the command\'s start (compile, decode, evaluation included)')
    ax.set_ylabel('kNN top-1 (%), CIFAR-10 test')
    ax.set_title(f'configs/speedrun_cifar10.py on {env.get("gpu") or "?"}'[:80], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.speedrun_out, 'curve.png'), dpi=120)
    print(f'wrote {args.speedrun_out}/summary.json and curve.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
