"""Writes the notebooks of this folder from the cell sources below (outputs stripped):

    python experiments/notebooks/make_notebooks.py [--check]

  new_objective.ipynb       a new loss as a pure function, registered as an objective, trained against SimCLR
  directpred_spectrum.ipynb DirectPred with a trainable linear predictor: eigen-alignment with F over checkpoints
  ablation_sweep.ipynb      SimCLR's temperature swept, final accuracy and curves per value

Each notebook imports only ssljax (and jax for the loss it writes), numpy and matplotlib, and reads its size from one
cell (tagged ``parameters``; edit it or set its environment variables, no papermill needed): the defaults train on
the embedded MNIST subset in a few minutes on a CPU; the environment variable ``SSLJAX_NOTEBOOK_TINY=1`` switches
to a seconds-long setting (scikit-learn's 8x8 digits, a tiny ResNet, 6 steps), which tests/test_notebooks.py
executes. ``SSLJAX_NOTEBOOK_WORKDIR`` moves the runs'
workdirs (default ``<repository>/workdirs/notebooks``). ``--check`` exits 1 when a notebook on disk differs from what
this script writes (edit the cells here, not in the .ipynb, then rerun it).

The plotting cells start with ``%matplotlib inline``: the evaluators save their figures through pyplot with the Agg
backend during training, which would otherwise leave the notebook drawing nowhere.
"""

from __future__ import annotations

import argparse
import os
import sys

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

PARAMETERS = '''\
# Parameters: edit the values here, or set the environment variables below before `jupyter execute` / `jupyter lab`.
import os
EPOCHS = {epochs}            # training epochs per run on the embedded MNIST subset (15 steps of 256 images each)
TINY = os.environ.get('SSLJAX_NOTEBOOK_TINY', '') == '1'   # seconds-long runs on 8x8 digits (the test suite)
WORKDIR = os.environ.get('SSLJAX_NOTEBOOK_WORKDIR', '')    # '' -> <repository>/workdirs/notebooks{extra}'''

SETUP = '''\
import json
import shutil

import matplotlib.pyplot as plt
import numpy as np

import ssljax
from ssljax import configure, train
from ssljax.plot import read_metrics   # metrics.jsonl as {{key: (steps, values)}}


def find_repository(start='.'):
    """The ssljax checkout this notebook sits in (the folder holding configs/)."""
    path = os.path.abspath(start)
    while not os.path.isfile(os.path.join(path, 'configs', 'simclr.py')):
        if os.path.dirname(path) == path:
            raise FileNotFoundError('run this notebook inside the ssljax repository (no configs/ found above it)')
        path = os.path.dirname(path)
    return path


REPO = find_repository()
ROOT = os.path.join(WORKDIR or os.path.join(REPO, 'workdirs', 'notebooks'), {name!r})
shutil.rmtree(ROOT, ignore_errors=True)   # this notebook's own runs start afresh each time it runs

# The size of every run: the embedded MNIST default for EPOCHS epochs, or the test suite's tiny setting.
TINY_SIZE = ['dataset=digits', 'model.backbone=resnet_tiny', 'augment.blur_prob=0.0', 'batch_size=16',
             'total_steps=6', 'log_every=1', 'eval_every=3', 'checkpoint_every=3', 'evals.linear.epochs=2',
             'evals.diagnostics.max_examples=256', 'eval.max_train_examples=256', 'eval.batch_size=128',
             'eval.random_init_baseline=False', 'optimizer.warmup_steps=1']
SIZE = TINY_SIZE if TINY else [f'epochs={{EPOCHS}}', 'log_every=5', 'eval_every=15', 'eval.random_init_baseline=False']


def make_config(spec, *overrides, evals={evals!r}):
    """configs/<spec> with the size above and ``overrides`` ('KEY=VALUE', as --config.KEY=VALUE on the command
    line), checked like the command line checks them; only the evaluators ``evals`` (those this notebook reads)."""
    config = configure.load_config_with_overrides(os.path.join(REPO, 'configs', spec), [*SIZE, *overrides])
    for name in set(config.evals) - set(evals):
        del config.evals[name]
    return config


print('ssljax', ssljax.__version__, '| runs in', ROOT, '| tiny' if TINY else f'| {{EPOCHS}} epochs per run')'''


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip('\n'))


def code(text: str, tags=()):
    cell = nbformat.v4.new_code_cell(text.strip('\n'))
    if tags:
        cell.metadata['tags'] = list(tags)
    return cell


def preamble(name: str, epochs, extra: str = '', evals=('knn', 'online_probe', 'linear', 'diagnostics')):
    return [
        code(PARAMETERS.format(epochs=epochs, extra=extra), tags=('parameters',)),
        code(SETUP.format(name=name, evals=tuple(evals))),
    ]


# =====================================================================================================================
NEW_OBJECTIVE = [
    md('''
# A new loss in a notebook, trained against SimCLR

A loss is a pure function of arrays; an objective wraps it with the networks it needs (README, "Writing a new
objective"); `ssljax.train.train_and_evaluate(config, workdir)` trains it with the library's one loop (on-device
augmentation, the optimizer, checkpoints, kNN / linear-probe evaluation). Here: the **alignment + uniformity** loss
of Wang & Isola (2020), next to SimCLR with the same encoder, projector, views and budget.
'''),
    *preamble('new_objective', 5.0),
    md('''
## 1. The loss, as a pure function

With $n(x) = x / \\lVert x \\rVert$:
$\\mathcal{L} = \\operatorname{mean}_i \\lVert n(a_i) - n(b_i) \\rVert^2 + \\frac{w}{2}\\,(U(a) + U(b))$,
$U(z) = \\log \\operatorname{mean}_{i \\ne j} \\exp(-t \\lVert n(z_i) - n(z_j) \\rVert^2)$.
'''),
    code('''
import jax
import jax.numpy as jnp


def align_uniform_loss(z_a, z_b, weight=1.0, t=2.0):
    """Wang & Isola (2020): pull positive pairs together, spread all embeddings over the sphere."""
    a = z_a / jnp.linalg.norm(z_a, axis=1, keepdims=True)
    b = z_b / jnp.linalg.norm(z_b, axis=1, keepdims=True)
    align = jnp.mean(jnp.sum((a - b) ** 2, axis=1))

    def uniformity(z):
        sq = jnp.maximum(2.0 - 2.0 * z @ z.T, 0.0)            # ||z_i - z_j||^2 of unit vectors
        n = z.shape[0]
        logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, -t * sq)
        return jax.nn.logsumexp(logits) - jnp.log(n * (n - 1.0))

    return align + weight * 0.5 * (uniformity(a) + uniformity(b))


# It is an ordinary function: call it, differentiate it, check it against the library's diagnostics.
from ssljax.evaluation import alignment, uniformity
z_a, z_b = jax.random.normal(jax.random.key(0), (2, 64, 16))
value, grad = jax.jit(jax.value_and_grad(align_uniform_loss))(z_a, z_b)
expected = jax.jit(lambda a, b: alignment(a, b) + 0.5 * (uniformity(a) + uniformity(b)))(z_a, z_b)
print(f'loss {float(value):.4f} (diagnostics give {float(expected):.4f}), '
      f'gradient norm {float(jnp.linalg.norm(grad)):.4f}')
assert np.allclose(value, expected, rtol=1e-5)
'''),
    md('''
## 2. Registered as an objective

`TwoViewObjective` (in `ssljax.objectives.base`) runs two views through the encoder and a projector and asks only
for `pair_loss(z_a, z_b)`; `@register` makes it available as `config.method = 'align_uniform'`. Its fields are its
config keys with their defaults (the projector's `projector_hidden`, `projector_dim`, `projector_bn`, `bn_per_view`,
and here `weight`): the inherited `from_config` reads each one from `config.objective`.
'''),
    code('''
import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, register


@register
@dataclasses.dataclass(frozen=True)
class AlignUniform(TwoViewObjective):
    """Alignment + uniformity (Wang & Isola 2020) on the projections of two views."""
    name = 'align_uniform'
    weight: float = 1.0

    def pair_loss(self, z_a, z_b):
        metrics = {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}
        return align_uniform_loss(z_a, z_b, self.weight), metrics
'''),
    md('''
## 3. Both methods at one budget

The new method starts from SimCLR's config (views, projector, LARS, schedule) with `method` and its one setting
changed, so the two runs differ only in the loss.
'''),
    code('''
configs = {'simclr': make_config('simclr.py'), 'align_uniform': make_config('simclr.py')}
with configs['align_uniform'].unlocked():
    configs['align_uniform'].method = 'align_uniform'
    configs['align_uniform'].objective.weight = 1.0

summaries, curves = {}, {}
for name, config in configs.items():
    summaries[name] = train.train_and_evaluate(config, os.path.join(ROOT, name))
    curves[name] = read_metrics(os.path.join(ROOT, name))
for name, s in summaries.items():
    print(f"{name:14s} kNN {100 * s['knn_top1']:5.1f}  linear {100 * s['linear_top1']:5.1f}  "
          f"RankMe {s['diagnostics_rankme']:6.1f}  {s['steps']} steps, {s['wall_s']:.0f} s")
'''),
    md('''
## 4. Curves

The two losses live on different scales (each gets its own axis); the kNN monitor and the online linear probe are
comparable directly.
'''),
    code('''
%matplotlib inline
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for ax, name in zip(axes[:2], configs):
    steps, loss = curves[name]['train/loss']
    ax.plot(steps, loss, color='tab:blue' if name == 'simclr' else 'tab:orange')
    ax.set_title(f'{name}: train loss')
    ax.set_xlabel('step')
for name, color in zip(configs, ('tab:blue', 'tab:orange')):
    for key, style in (('eval/knn_top1', 'o-'), ('eval/online_probe_top1', 's--')):
        if key in curves[name]:
            steps, values = curves[name][key]
            axes[2].plot(steps, 100 * values, style, color=color, ms=4, label=f'{name} {key[5:]}')
    axes[2].plot([summaries[name]['steps']], [100 * summaries[name]['linear_top1']], '*', ms=12, color=color,
                 label=f'{name} linear probe (end)')
axes[2].set_title('test top-1 (%)')
axes[2].set_xlabel('step')
axes[2].legend(fontsize=7)
for ax in axes:
    ax.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
'''),
]

# =====================================================================================================================
DIRECTPRED = [
    md('''
# DirectPred: does a trained linear predictor align with the correlation matrix?

Tian et al. (2021) observe that a *trained* linear predictor $W_p$ of BYOL/SimSiam ends up sharing its eigenvectors
with the correlation matrix $F = \\mathbb{E}[z z^\\top]$ of the online projections, with eigenvalues
$p_j \\approx \\sqrt{s_j}$; DirectPred then sets $W_p$ from $F$ in closed form. Here we train
`configs/directpred.py:predictor=linear` (predictor trained by the optimizer, $F$ tracked as an EMA in the objective
state), keep checkpoints along training, and measure for each one, with $F = \\sum_j s_j u_j u_j^\\top$:
the eigen-alignment $\\cos(W_p u_j, u_j)$ (`ssljax.evaluation.eigen_alignment`) and $p_j = u_j^\\top W_p u_j$.
'''),
    *preamble(
        'directpred_spectrum',
        5.0,
        extra='\nCHECKPOINT_EVERY = 10    # steps between the checkpoints analysed below (15 steps = 1 epoch)\n'
        'TOP = 16                 # eigenvectors of F shown in the alignment plot',
        evals=('knn', 'online_probe', 'linear'),
    ),
    code('''
run_dir = os.path.join(ROOT, 'linear')
config = make_config('directpred.py:predictor=linear', 'keep_checkpoints=1000',
                     f'checkpoint_every={1 if TINY else CHECKPOINT_EVERY}',
                     *(['objective.projector_dim=8', 'objective.predictor_dim=8'] if TINY else []))
summary = train.train_and_evaluate(config, run_dir)
print(f"kNN {100 * summary['knn_top1']:.1f}, linear {100 * summary['linear_top1']:.1f}, {summary['steps']} steps")
'''),
    md('''
## Eigen-alignment over the checkpoints

`ssljax.checkpoint.load_tree` reads a checkpoint as a plain pytree (no model needed): the trained predictor is
`params['predictor']['kernel']` $= W_p^\\top$ (Flax's $y = z K$) and $F$ is `objective_state['corr']`.
'''),
    code('''
from ssljax import checkpoint
from ssljax.evaluation import eigen_alignment

steps = checkpoint.list_steps(run_dir)
results = {}
for step in steps:
    tree = checkpoint.load_tree(run_dir, step)
    W = np.asarray(tree['params']['predictor']['kernel'], np.float64).T
    F = np.asarray(tree['objective_state']['corr'], np.float64)
    s, cos = (np.asarray(x) for x in eigen_alignment(W, F))           # eigenvalues of F (descending), cosines
    s_np, U = np.linalg.eigh((F + F.T) / 2)
    U = U[:, ::-1]
    p = np.einsum('ij,ij->j', U, W @ U)                                 # predictor eigenvalue along u_j
    results[step] = dict(s=s, cos=cos, p=p)
top = min(TOP, len(results[steps[-1]]['s']))
for step in steps:
    print(f"step {step:4d}: mean alignment of the top {top}: {results[step]['cos'][:top].mean():.3f}, "
          f"of all: {results[step]['cos'].mean():.3f}")
'''),
    code('''
%matplotlib inline
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
cos = np.array([results[s]['cos'][:top] for s in steps])
cmap = plt.get_cmap('viridis')
for j in range(top):
    axes[0].plot(steps, cos[:, j], color=cmap(j / max(top - 1, 1)), lw=1)
axes[0].plot(steps, cos.mean(1), 'k--', lw=2, label=f'mean of the top {top}')
axes[0].set(xlabel='step', ylabel=r'$\\cos(W_p u_j, u_j)$', title='eigen-alignment (colour: rank j of $s_j$)')
axes[0].legend()

for i, step in enumerate(steps):
    s = np.maximum(results[step]['s'], 1e-12)
    axes[1].semilogy(np.arange(1, s.size + 1), s / s[0], color=cmap(i / max(len(steps) - 1, 1)), label=f'step {step}')
axes[1].set(xlabel='j', ylabel=r'$s_j / s_1$', title='spectrum of F over training')
axes[1].legend(fontsize=7)

last = results[steps[-1]]
keep = (last['s'] > last['s'][0] * 1e-6) & (last['p'] > 0)
axes[2].loglog(last['s'][keep], last['p'][keep], 'o', ms=4, label=r'$p_j$ at the last step')
if keep.sum() >= 2:
    alpha, log_c = np.polyfit(np.log(last['s'][keep]), np.log(last['p'][keep]), 1)
    grid = np.geomspace(last['s'][keep].min(), last['s'][keep].max(), 50)
    axes[2].loglog(grid, np.exp(log_c) * grid ** alpha, 'r-', label=rf'fit $p \\propto s^{{{alpha:.2f}}}$')
    anchor = np.exp(np.median(np.log(last['p'][keep])) - 0.5 * np.median(np.log(last['s'][keep])))
    axes[2].loglog(grid, anchor * grid ** 0.5, 'k--', label=r'$p \\propto s^{1/2}$ (DirectPred)')
axes[2].set(xlabel=r'eigenvalue $s_j$ of F', ylabel=r'$p_j = u_j^T W_p u_j$', title='predictor vs F eigenvalues')
axes[2].legend(fontsize=8)
for ax in axes:
    ax.grid(True, which='both', alpha=0.3)
fig.tight_layout()
plt.show()
'''),
    md('''
Longer runs (`experiments/directpred/linear_60ep/`, made by `experiments/directpred/analysis.py`) show the
alignment rising towards 1 and the fitted exponent approaching 1/2; a few epochs show the start of that trend.
'''),
]

# =====================================================================================================================
ABLATION = [
    md('''
# An ablation sweep: SimCLR's temperature

One setting changed per run, everything else equal: each value of `objective.temperature` trains with
`train.train_and_evaluate`, and the final kNN / linear-probe top-1, RankMe and the kNN monitor over training are
compared. The same sweep from a shell, one process per value and a table with a bar plot:
`python -m ssljax.reproduce --methods 'simclr@objective.temperature=0.1 simclr@objective.temperature=0.5'
--out workdirs/temperature --config.epochs=5`.
'''),
    *preamble('ablation_sweep', 5.0, extra='\nTEMPERATURES = (0.1, 0.5)   # the values swept'),
    code('''
summaries, curves = {}, {}
for t in TEMPERATURES:
    workdir = os.path.join(ROOT, f'temperature_{t}')
    summaries[t] = train.train_and_evaluate(make_config('simclr.py', f'objective.temperature={t}'), workdir)
    curves[t] = read_metrics(workdir)
print('temperature  kNN  linear  RankMe')
for t, s in summaries.items():
    print(f"{t:11.2f} {100 * s['knn_top1']:5.1f} {100 * s['linear_top1']:6.1f} {s['diagnostics_rankme']:7.1f}")
'''),
    code('''
%matplotlib inline
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
x = np.arange(len(TEMPERATURES))
for dx, key, label in ((-0.2, 'knn_top1', 'kNN'), (0.2, 'linear_top1', 'linear probe')):
    axes[0].bar(x + dx, [100 * summaries[t][key] for t in TEMPERATURES], 0.4, label=label)
axes[0].set_xticks(x)
axes[0].set_xticklabels([f'tau={t}' for t in TEMPERATURES])
axes[0].set(ylabel='test top-1 (%)', title='final accuracy')
axes[0].legend(fontsize=8)

axes[1].bar(x, [summaries[t]['diagnostics_rankme'] for t in TEMPERATURES], 0.5, color='tab:green')
axes[1].set_xticks(x)
axes[1].set_xticklabels([f'tau={t}' for t in TEMPERATURES])
axes[1].set(ylabel='RankMe of the test features', title='effective rank (end)')

for t in TEMPERATURES:
    if 'eval/knn_top1' in curves[t]:
        steps, values = curves[t]['eval/knn_top1']
        steps, values = np.append(steps, summaries[t]['steps']), np.append(values, summaries[t]['knn_top1'])
        axes[2].plot(steps, 100 * values, 'o-', ms=4, label=f'tau={t}')
axes[2].set(xlabel='step', ylabel='kNN top-1 (%)', title='kNN monitor over training')
axes[2].legend(fontsize=8)
for ax in axes:
    ax.grid(True, axis='y', alpha=0.3)
fig.tight_layout()
plt.show()
'''),
]

NOTEBOOKS = {
    'new_objective.ipynb': NEW_OBJECTIVE,
    'directpred_spectrum.ipynb': DIRECTPRED,
    'ablation_sweep.ipynb': ABLATION,
}


def build(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb.metadata['language_info'] = {'name': 'python'}
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same files
        cell['id'] = f'cell-{i:02d}'
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + '\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='compare with the files on disk instead of writing')
    args = parser.parse_args()
    stale = []
    for name in NOTEBOOKS:
        path = os.path.join(HERE, name)
        text = render(name)
        if args.check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(name)
        else:
            with open(path, 'w') as f:
                f.write(text)
            print(f'wrote {path}')
    if stale:
        print(f'out of date: {", ".join(stale)} (run python experiments/notebooks/make_notebooks.py)', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
