"""experiments/architecture/compare_runs.py: the refactor check compares bit for bit and names the first difference;
a recorded run is reproducible in the same process."""
import importlib.util
import json
import os

import pytest
from conftest import REPO


def _compare_runs():
    path = os.path.join(REPO, 'experiments', 'architecture', 'compare_runs.py')
    spec = importlib.util.spec_from_file_location('compare_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_finds_the_first_differing_step_and_metric(tmp_path, capsys):
    cr = _compare_runs()
    rows = [{'step': 1, 'train/loss': 2.5, 'train/lr': 0.1}, {'step': 2, 'train/loss': 2.25, 'train/lr': 0.2}]
    changed = [dict(rows[0]), dict(rows[1], **{'train/loss': 2.2500000000000004})]
    a, b, c = (tmp_path / f'{n}.json' for n in 'abc')
    a.write_text(json.dumps({'simclr': rows, 'byol': rows}))
    b.write_text(json.dumps({'simclr': rows, 'byol': rows}))
    c.write_text(json.dumps({'simclr': changed}))
    assert cr.main(['compare', str(a), str(b)]) == 0
    assert '2 identical, 0 differ' in capsys.readouterr().out
    assert cr.main(['compare', str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert 'simclr: DIFFERS, step 2 train/loss: 2.25 vs 2.2500000000000004' in out
    assert 'byol: only in' in out


def test_every_spec_names_a_config_file():
    cr = _compare_runs()
    names = {spec.partition(':')[0] for spec in cr.SPECS}
    files = {f[:-3] for f in os.listdir(os.path.join(REPO, 'configs')) if f.endswith('.py')} - {'common', '__init__'}
    assert names == files  # every method config, and nothing else


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_a_recorded_run_is_reproducible(tmp_path):
    cr = _compare_runs()
    first, second = (cr.record_one('simclr', steps=3) for _ in range(2))
    assert len(first) == 3 and [r['step'] for r in first] == [1, 2, 3]
    assert first == second
