"""The notebooks of experiments/notebooks run top to bottom at their tiny setting and draw their figures; the files on
disk are what their generator writes, with outputs stripped."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')  # the notebooks' 'python3' kernel

NOTEBOOKS = os.path.join(REPO, 'experiments', 'notebooks')


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
    """One JAX persistent compilation cache for the notebooks of this module: the kernels compile the same tiny
    encoder's evaluation (and SimCLR's step) once instead of once per run, which is most of a tiny run's time."""
    return str(tmp_path_factory.mktemp('jax_compilation_cache'))


def execute(name: str, workdir, monkeypatch, cache: str) -> nbformat.NotebookNode:
    """Runs the notebook in a fresh kernel with SSLJAX_NOTEBOOK_TINY=1 and its runs under ``workdir``; a cell that
    raises fails the test with the cell's traceback."""
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', cache)
    monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    monkeypatch.setenv('SSLJAX_NOTEBOOK_TINY', '1')
    monkeypatch.setenv('SSLJAX_NOTEBOOK_WORKDIR', str(workdir))
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, startup_timeout=120, kernel_name='python3',
                                     resources={'metadata': {'path': NOTEBOOKS}})
    client.execute()
    return nb


def outputs(nb) -> tuple[str, int]:
    """(all printed text, number of PNG figures) of an executed notebook."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            if out.get('output_type') == 'stream':
                text.append(out['text'])
            images += 'image/png' in out.get('data', {})
    return ''.join(text), images


def summary(path) -> dict:
    with open(path / 'summary.json') as f:
        return json.load(f)


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_new_objective_notebook_trains_the_new_loss_against_simclr(tmp_path, monkeypatch, compile_cache):
    nb = execute('new_objective.ipynb', tmp_path, monkeypatch, compile_cache)
    text, images = outputs(nb)
    assert images >= 1
    root = tmp_path / 'new_objective'
    assert summary(root / 'align_uniform')['method'] == 'align_uniform'
    assert summary(root / 'simclr')['method'] == 'simclr'
    # the pure function agreed with the library's alignment + uniformity (the cell asserts it and prints both)
    loss, diagnostics = text.split('loss ')[1].split(' (diagnostics give ')
    assert abs(float(loss) - float(diagnostics.split(')')[0])) < 1e-3


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_directpred_notebook_measures_alignment_at_every_checkpoint(tmp_path, monkeypatch, compile_cache):
    nb = execute('directpred_spectrum.ipynb', tmp_path, monkeypatch, compile_cache)
    text, images = outputs(nb)
    assert images >= 1
    lines = [line for line in text.splitlines() if line.startswith('step ') and 'mean alignment' in line]
    assert [int(line.split()[1].rstrip(':')) for line in lines] == list(range(1, 7))  # a checkpoint per step
    for line in lines:
        assert -1.0 <= float(line.split('of all: ')[1]) <= 1.0


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_ablation_notebook_sweeps_the_temperature(tmp_path, monkeypatch, compile_cache):
    nb = execute('ablation_sweep.ipynb', tmp_path, monkeypatch, compile_cache)
    _, images = outputs(nb)
    assert images >= 1
    runs = sorted(p.name for p in (tmp_path / 'ablation_sweep').iterdir())
    assert runs == ['temperature_0.1', 'temperature_0.5']
    for run in runs:
        config = json.load(open(tmp_path / 'ablation_sweep' / run / 'config.json'))
        assert config['objective']['temperature'] == float(run.split('_')[1])


def test_notebooks_are_what_the_generator_writes_without_outputs():
    r = subprocess.run([sys.executable, os.path.join(NOTEBOOKS, 'make_notebooks.py'), '--check'], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ('new_objective.ipynb', 'directpred_spectrum.ipynb', 'ablation_sweep.ipynb'):
        nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        assert all(not c.get('outputs') and not c.get('execution_count') for c in nb.cells if c.cell_type == 'code')
        tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
        assert len(tagged) == 1 and 'SSLJAX_NOTEBOOK_TINY' in tagged[0].source
        imports = {line.split()[1].split('.')[0] for c in nb.cells if c.cell_type == 'code'
                   for line in c.source.splitlines() if line.startswith(('import ', 'from '))}
        assert imports <= {'os', 'json', 'shutil', 'dataclasses', 'ssljax', 'numpy', 'matplotlib', 'jax'}, imports
