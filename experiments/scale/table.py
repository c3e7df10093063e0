"""Markdown rows of BENCHMARKS.md's "Memory at scale" from experiments/scale/memory.jsonl (bench --memory lines)."""

import json
import os
import sys

GIB = 2.0**30


def row(d: dict) -> str:
    layout = ('scan' if d['scan'] else 'unrolled') + (' + remat' if d['remat'] != 'none' else '')
    if d.get('sharding_strategy'):
        layout += ' + fsdp'
    g = lambda key: f'{d[key] / GIB:.2f}'  # noqa: E731
    hbm = {'TPU v5 lite': 16, 'TPU v4': 32, 'TPU v5': 95}.get(d['device_kind'])
    fits = '' if hbm is None else ('yes' if d['total_bytes_per_device'] <= hbm * GIB else 'no')
    cpu = d.get('compile_cpu_s')
    compile_s = f"{d['compile_s']:.0f} s / " + (f'{cpu:.0f} s' if cpu is not None else 'not recorded')
    return (
        f"| {layout} | {d['batch_per_device']:g} | {g('state_bytes_per_device')} | {g('argument_bytes_per_device')} "
        f"| {g('output_bytes_per_device')} ({g('alias_bytes_per_device')}) | {g('temp_bytes_per_device')} "
        f"| {g('code_bytes_per_device')} | {g('total_bytes_per_device')} | {fits} | {d['flops'] / 1e12:.2f} T "
        f'| {compile_s} |'
    )


if __name__ == '__main__':
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'memory.jsonl')
    for line in open(path):
        d = json.loads(line)
        print(d['row'], d['topology'], row(d))
