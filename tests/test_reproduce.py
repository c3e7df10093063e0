"""python -m ssljax.reproduce: the table from the workdirs' summary.json files (columns, missing values, failures),
resuming (finished methods are skipped, --rerun moves them aside) and one real run end to end."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from ssljax import reproduce

MACHINE = {'cpu_count': 2, 'platform': 'cpu', 'device_kind': 'cpu', 'device_count': 1}
SUMMARY = dict(steps=10, knn_top1=0.8, linear_top1=0.9, online_probe_top1=0.5, random_init_knn_top1=0.6,
               random_init_linear_top1=0.7, final_loss=1.23456, wall_s=12.34, train_samples_per_s=456.7)


def fabricate(out, spec, summary=None, record=None):
    workdir = os.path.join(out, reproduce.workdir_name(spec))
    os.makedirs(workdir, exist_ok=True)
    if summary is not None:
        with open(os.path.join(workdir, 'summary.json'), 'w') as f:
            json.dump(summary, f)
    if record is not None:
        with open(os.path.join(workdir, 'reproduce.json'), 'w') as f:
            json.dump(record, f)
    return workdir


def table_rows(markdown: str) -> dict:
    """{method: {header: cell}} of the markdown table (an escaped pipe stays inside its cell)."""
    def split(line):
        return [c.strip().replace('\0', '|') for c in line.replace('\\|', '\0').strip().strip('|').split('|')]
    lines = [line for line in markdown.splitlines() if line.startswith('|') and not line.startswith('|---')]
    header = split(lines[0])
    return {cells[0]: dict(zip(header, cells)) for cells in map(split, lines[1:])}


def test_table_columns_missing_values_and_failure_rows(tmp_path):
    out = str(tmp_path)
    command = 'python -m ssljax.main --config=configs/simclr.py'
    fabricate(out, 'simclr', SUMMARY, {'method': 'simclr', 'command': command,
                                       'date': '2026-11-01 10:00 UTC', 'machine': MACHINE, 'load_start': 1.5,
                                       'load_end': 2.5, 'returncode': 0})
    fabricate(out, 'byol', dict(SUMMARY, linear_top1=None, part_probe_part_top1=0.41, part_probe_whole_top1=0.52,
                                random_init_part_probe_part_top1=0.2))
    fabricate(out, 'dino', None, {'method': 'dino', 'command': 'python -m ssljax.main --config=configs/dino.py',
                                  'date': '2026-11-01 11:00 UTC', 'machine': MACHINE, 'returncode': 1,
                                  'wall_s': 3.25, 'error': 'ssljax: error: bad | value'})
    reproduce.reproduce(['simclr', 'byol', 'dino', 'vicreg'], out, title='T', table_only=True)
    text = open(tmp_path / 'table.md').read()
    rows = table_rows(text)
    assert list(rows) == ['simclr', 'byol', 'dino', 'vicreg']
    assert list(rows['simclr']) == [
        'method', 'kNN top-1', 'linear top-1', 'online probe', 'part_probe whole-level top-1',
        'part_probe part-level top-1', 'random-init kNN', 'random-init linear',
        'random-init part_probe part-level top-1', 'final loss', 'steps', 'wall s', 'train samples/s']
    assert rows['simclr']['kNN top-1'] == '80.0' and rows['simclr']['final loss'] == '1.2346'
    assert rows['simclr']['part_probe part-level top-1'] == '-'            # a run without the evaluator
    assert rows['byol']['linear top-1'] == '-'                             # null in summary.json
    assert rows['byol']['part_probe whole-level top-1'] == '52.0'
    assert rows['byol']['part_probe part-level top-1'] == '41.0'
    assert rows['byol']['random-init part_probe part-level top-1'] == '20.0'
    assert rows['dino']['kNN top-1'] == 'failed: ssljax: error: bad | value' and rows['dino']['wall s'] == '3.2'
    assert rows['vicreg']['kNN top-1'].startswith('not run')
    assert 'Machine: 2 CPU cores, 1 x cpu (cpu)' in text and '2026-11-01 10:00 UTC to 2026-11-01 11:00 UTC' in text
    assert '- simclr: `python -m ssljax.main --config=configs/simclr.py` (2026-11-01 10:00 UTC, load average 1.5 ' \
           'at start, 2.5 at end)' in text
    assert '- byol: command not recorded' in text and '- vicreg: not run' in text
    data = json.load(open(tmp_path / 'table.json'))
    assert [r['status'] for r in data['rows']] == ['ok', 'ok', 'failed', 'missing']
    assert data['rows'][1]['summary']['part_probe_whole_top1'] == 0.52
    assert open(tmp_path / 'table.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'

    # the optional columns disappear when no row has them; --table-only finds the methods in table.json
    (tmp_path / 'byol' / 'summary.json').unlink()
    reproduce.reproduce([], out, title='T', table_only=True)
    header = list(table_rows(open(tmp_path / 'table.md').read())['simclr'])
    assert not any('part' in h for h in header) and 'online probe' in header


def test_finished_methods_are_skipped_and_rerun_moves_them_aside(tmp_path, monkeypatch):
    out = str(tmp_path)
    kept = fabricate(out, 'simclr', SUMMARY)
    ran = []

    def fake_run(spec, workdir, argv, machine, echo=True):
        ran.append((spec, argv))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, 'summary.json'), 'w') as f:
            json.dump(dict(SUMMARY, knn_top1=0.5), f)
        record = {'method': spec, 'command': reproduce.command_text(argv), 'returncode': 0, 'wall_s': 1.0,
                  'machine': machine, 'date': 'now'}
        with open(os.path.join(workdir, 'reproduce.json'), 'w') as f:
            json.dump(record, f)
        return record

    monkeypatch.setattr(reproduce, 'run_method', fake_run)
    monkeypatch.setattr(reproduce, 'probe_devices', lambda: dict(MACHINE))
    specs = ['simclr', 'byol:epochs=2', 'simclr@objective.temperature=0.5@seed=4']
    reproduce.reproduce(specs, out, config_arg='dataset=mnist', overrides=['seed=3'])
    assert [spec for spec, _ in ran] == specs[1:]                      # simclr had finished: kept
    argv = ran[0][1]
    assert argv[:3] == ['-m', 'ssljax.main', '--config=configs/byol.py:dataset=mnist,epochs=2']
    assert argv[3] == f'--workdir={os.path.join(out, "byol-epochs-2")}' and argv[4:] == ['--config.seed=3']
    argv = ran[1][1]  # the spec's own overrides come after the shared ones, so they win
    assert argv[2:] == ['--config=configs/simclr.py:dataset=mnist',
                        f'--workdir={os.path.join(out, "simclr-objective.temperature-0.5-seed-4")}',
                        '--config.seed=3', '--config.objective.temperature=0.5', '--config.seed=4']
    assert table_rows(open(tmp_path / 'table.md').read())['simclr']['kNN top-1'] == '80.0'

    ran.clear()
    reproduce.reproduce(specs, out)                                    # everything finished: nothing runs
    assert ran == []
    reproduce.reproduce(['simclr'], out, rerun=True)
    assert [spec for spec, _ in ran] == ['simclr']
    moved = [p for p in os.listdir(out) if p.startswith('simclr.replaced-')]
    assert len(moved) == 1 and json.load(open(tmp_path / moved[0] / 'summary.json'))['knn_top1'] == 0.8
    assert json.load(open(os.path.join(kept, 'summary.json')))['knn_top1'] == 0.5


def test_command_line_runs_what_is_not_finished_and_records_failures(tmp_path):
    """Through the command line: a finished method is kept, a method whose config does not exist runs in its own
    process and fails (its row says why); a second invocation tries only the failed one again; --table-only (and the
    old experiments/run_table.py --rebuild) rebuild the same table."""
    out = tmp_path / 'table'
    fabricate(str(out), 'simclr', SUMMARY, {'method': 'simclr', 'command': 'python -m ssljax.main --seed=1',
                                            'returncode': 0, 'machine': MACHINE, 'date': '2026-11-01 10:00 UTC'})
    cmd = [sys.executable, '-m', 'ssljax.reproduce', '--methods', 'simclr no_such_method', f'--out={out}',
           '--title', 'tiny', '--quiet', '--config.seed=1']
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '== simclr: finished' in r.stdout and 'not by this command' in r.stdout  # recorded command differs
    assert not (out / 'simclr' / 'log.txt').exists()
    rows = table_rows(open(out / 'table.md').read())
    assert rows['simclr']['kNN top-1'] == '80.0'
    assert rows['no_such_method']['kNN top-1'] == \
        "failed: ssljax: error: config file 'configs/no_such_method.py' not found"
    record = json.load(open(out / 'no_such_method' / 'reproduce.json'))
    assert record['command'] == ('python -m ssljax.main --config=configs/no_such_method.py '
                                 f'--workdir={out / "no_such_method"} --config.seed=1')
    assert record['returncode'] == 2 and record['machine']['cpu_count'] == os.cpu_count()
    assert f'- no_such_method: `{record["command"]}` ({record["date"]}, load average' in open(out / 'table.md').read()

    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert open(out / 'no_such_method' / 'log.txt').read().count('=== ') == 2  # the failed one tried again
    attempts = json.load(open(out / 'no_such_method' / 'reproduce.json'))['attempts']
    assert [a['returncode'] for a in attempts] == [2, 2]
    assert f'2 attempts, {sum(a["wall_s"] for a in attempts):.0f} s in all)' in open(out / 'table.md').read()
    assert not (out / 'simclr' / 'log.txt').exists()

    before = table_rows(open(out / 'table.md').read())
    r = subprocess.run([sys.executable, 'experiments/run_table.py', f'--out={out}', '--title', 'tiny', '--rebuild'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert table_rows(open(out / 'table.md').read()) == before


def test_bad_method_spec_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match='is not NAME'):
        reproduce.reproduce(['simclr', 'byol@temperature'], str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('argv, message', [
    (['--out', 'x'], '--methods is required'),
    (['--out', 'x', '--methods', 'simclr', '--learning_rate=1'], 'unrecognised argument'),
])
def test_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        reproduce.parse_args(argv)
    assert message in capsys.readouterr().err


def test_values_evaluated_after_training_join_the_row(tmp_path):
    """eval_<final step>.json (python -m ssljax.evaluate on the finished run) adds its values to the row; an
    evaluation of another step does not, and the summary's own values win."""
    out = str(tmp_path)
    workdir = fabricate(out, 'simclr', SUMMARY)
    with open(os.path.join(workdir, 'eval_10.json'), 'w') as f:
        json.dump({'step': 10, 'part_part_top1': 0.33, 'part_whole_top1': 0.77, 'knn_top1': 0.1}, f)
    with open(os.path.join(workdir, 'eval_5.json'), 'w') as f:
        json.dump({'step': 5, 'other_part_top1': 0.5}, f)
    reproduce.reproduce(['simclr'], out, title='T', table_only=True)
    row = table_rows(open(tmp_path / 'table.md').read())['simclr']
    assert row['part part-level top-1'] == '33.0' and row['part whole-level top-1'] == '77.0'
    assert row['kNN top-1'] == '80.0' and not any(h.startswith('other') for h in row)


def test_masked_columns_extra_keys_grids_and_export(tmp_path):
    """Fine-tune top-1 and reconstruction error appear when a run has them; --columns adds named keys; the latest
    reconstruction grid of a run is linked and copied next to the table, in --out and in --export."""
    out, export = str(tmp_path / 'runs'), str(tmp_path / 'experiments')
    mae = fabricate(out, 'mae', dict(SUMMARY, finetune_top1=0.456, reconstruction_error=0.123456))
    fabricate(out, 'simclr', dict(SUMMARY, finetune15_top1=0.5))
    os.makedirs(os.path.join(mae, 'figures'))
    for step, payload in ((5, b'old'), (10, b'new')):
        with open(os.path.join(mae, 'figures', f'reconstruction_grid_{step}.png'), 'wb') as f:
            f.write(payload)
    reproduce.reproduce(['mae', 'simclr'], out, title='T', table_only=True, extra=('finetune15_top1', 'absent'),
                        export=export)
    for where in (out, export):
        rows = table_rows(open(os.path.join(where, 'table.md')).read())
        assert list(rows['mae'])[1:6] == ['kNN top-1', 'linear top-1', 'online probe', 'fine-tune top-1',
                                          'recon. error']
        assert rows['mae']['fine-tune top-1'] == '45.6' and rows['mae']['recon. error'] == '0.1235'
        assert rows['simclr']['fine-tune top-1'] == '-' and rows['simclr']['finetune15_top1'] == '50.0'
        assert 'absent' not in rows['mae'] and list(rows['mae'])[-1] == 'grid'
        assert rows['mae']['grid'] == '[png](figures/mae_grid.png)' and rows['simclr']['grid'] == '-'
        assert open(os.path.join(where, 'figures', 'mae_grid.png'), 'rb').read() == b'new'
        assert os.path.exists(os.path.join(where, 'table.png'))
