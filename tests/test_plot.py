"""python -m ssljax.plot: curves from metrics.jsonl, and the feature figures of a tiny finished run, whose RankMe
recomputed from the checkpoints equals the RankMe the run logged at the same steps."""
import json

import numpy as np
import pytest
from conftest import tiny_config

from ssljax import plot, train

PNG = b'\x89PNG\r\n\x1a\n'


def test_metrics_are_read_and_grouped_into_panels(tmp_path):
    rows = [{'step': 2, 'train/loss': 3.0, 'train/lr': 0.1, 'train/probe_acc': 0.2, 'train/pos_cosine': 0.5},
            {'step': 2, 'eval/knn_top1': 0.4, 'eval/diagnostics_rankme': 5.0, 'eval/clustering_nmi': 0.3},
            {'step': 4, 'train/loss': None, 'train/lr': 0.05, 'train/probe_acc': 0.3, 'train/pos_cosine': 0.6},
            {'step': 4, 'final/knn_top1': 0.5, 'final/linear_top1': 0.6, 'final/diagnostics_rankme': 6.0,
             'final/clustering_acc': 0.7, 'final/diagnostics_alignment': 0.1}]
    with open(tmp_path / 'metrics.jsonl', 'w') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 5, "train/lo')  # a line cut by a kill
    metrics = plot.read_metrics(str(tmp_path))
    np.testing.assert_array_equal(metrics['train/loss'][0], [2])            # the null is left out
    np.testing.assert_array_equal(metrics['train/lr'][1], [0.1, 0.05])
    panels = dict(plot.curve_panels(metrics))
    assert list(panels)[:4] == ['train loss', 'learning rate', 'top-1 accuracy', 'RankMe']
    accuracy = {label: kind for label, _, _, kind in panels['top-1 accuracy']}
    assert accuracy == {'eval/knn_top1': 'line', 'final/knn_top1': 'final', 'final/linear_top1': 'final',
                        'train/probe_acc': 'line'}
    assert {label for label, *_ in panels['RankMe']} == {'eval/diagnostics_rankme', 'final/diagnostics_rankme'}
    # one panel per other scalar logged during training; values logged only at the end get none
    assert set(panels) - {'train loss', 'learning rate', 'top-1 accuracy', 'RankMe'} == {
        'train/pos_cosine', 'eval/clustering_nmi'}
    assert plot.plot_curves(metrics, str(tmp_path / 'c.png'))[0] == 'train loss'
    assert (tmp_path / 'c.png').read_bytes()[:8] == PNG


def test_logged_rankme_is_preferred_and_ends_with_the_final_value():
    metrics = {'eval/diagnostics_rankme': (np.array([2.0, 4.0]), np.array([5.0, 6.0])),
               'final/diagnostics_rankme': (np.array([6.0]), np.array([7.0]))}
    steps, values = plot.logged_rankme(metrics)
    np.testing.assert_array_equal(steps, [2, 4, 6])
    np.testing.assert_array_equal(values, [5, 6, 7])
    assert plot.logged_rankme({'final/diagnostics_rankme': metrics['final/diagnostics_rankme']}) is None


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_plot_command_writes_every_figure_of_a_finished_run(tmp_path):
    """A tiny SimCLR run (a checkpoint every 2 steps, RankMe logged at step 2 and at the end): every figure is a
    non-empty PNG, and RankMe recomputed from the checkpoints equals the RankMe the run logged at those steps."""
    workdir = tmp_path / 'simclr'
    config = tiny_config('simclr', total_steps=4, checkpoint_every=2, keep_checkpoints=10, eval_every=2)
    config.evals.diagnostics.every = -1
    config.evals.diagnostics.max_examples = 64
    config.eval.baseline_evals = ('knn',)
    del config.evals['clustering'], config.evals['linear']
    summary = train.train_and_evaluate(config, str(workdir))

    out = tmp_path / 'figures'
    assert plot.run([f'--workdir={workdir}', f'--out={out}', '--umap-max=200', '--rankme=checkpoints']) == 0
    for name in ('curves', 'spectrum', 'rankme', 'umap'):
        data = (out / f'{name}.png').read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
    drawn = json.load(open(out / 'plots.json'))
    assert drawn['step'] == 4
    sigma = drawn['singular_values']
    assert set(sigma) == {'step 4', 'random init'} and len(sigma['step 4']) == 16  # resnet_tiny: 16 features
    assert sigma['step 4'] == sorted(sigma['step 4'], reverse=True)
    assert drawn['rankme']['source'].startswith('from the 2 kept checkpoints')
    assert drawn['rankme']['steps'] == [0, 2, 4]
    logged = plot.read_metrics(str(workdir))['eval/diagnostics_rankme']
    np.testing.assert_array_equal(logged[0], [2])
    assert drawn['rankme']['values'][1] == pytest.approx(logged[1][0], rel=1e-5)
    assert drawn['rankme']['values'][2] == pytest.approx(summary['diagnostics_rankme'], rel=1e-5)


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert plot.run([f'--workdir={tmp_path}']) == 2
    assert 'no metrics.jsonl' in capsys.readouterr().err
