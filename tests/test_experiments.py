"""The experiment scripts run on a tiny training run and write what they promise."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_config

from ssljax import train


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_directpred_analysis_writes_plots_and_numbers(tmp_path):
    run = tmp_path / 'linear'
    config = tiny_config('directpred', total_steps=3, checkpoint_every=1, keep_checkpoints=10)
    config.objective.predictor = 'linear'
    config.objective.projector_dim = 8
    config.objective.predictor_dim = 8
    train.train_and_evaluate(config, str(run))
    out = tmp_path / 'plots'
    r = subprocess.run([sys.executable, 'experiments/directpred/analysis.py', f'--workdir={run}', f'--out={out}'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / 'eigen_alignment.png').stat().st_size > 1000 and (out / 'eigenvalues.png').stat().st_size > 1000
    summary = json.load(open(out / 'analysis.json'))
    assert summary['steps'] == [1, 2, 3]
    assert all(-1.0 <= v <= 1.0 for v in summary['mean_alignment_all'].values())


def test_directpred_analysis_refuses_a_run_without_correlation(tmp_path):
    """The run's checkpoint is its initial TrainState, written as the loop writes it (no training: the refusal reads
    only which trees the state holds, and a step leaves those as they are; compiling the step would double the time)."""
    from ssljax import checkpoint as ckpt_lib
    run = tmp_path / 'mlp'
    config = tiny_config('directpred', total_steps=1, checkpoint_every=1)
    config.objective.predictor = 'mlp'
    os.makedirs(run)
    state = train.setup(config, str(run)).state
    assert 'corr' not in state.objective_state
    ckpt = ckpt_lib.Checkpointer(str(run), 3)
    ckpt.save(1, state)
    ckpt.close()
    r = subprocess.run([sys.executable, 'experiments/directpred/analysis.py', f'--workdir={run}',
                        f'--out={tmp_path / "plots"}'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'keeps no correlation matrix' in r.stderr
