"""Figures of one run: python -m ssljax.plot --workdir DIR [--out DIR/figures] [--step N] [--config.KEY=VALUE ...]

Writes, into ``--out`` (default ``DIR/figures``):
  - ``curves.png``: every scalar of ``DIR/metrics.jsonl`` over training steps, one panel per quantity: the train
    loss, the learning rate, top-1 accuracies together (kNN / online probe / any ``*_top1`` evaluator during
    training, the online probe's running train accuracy, and the final values as stars), RankMe, and one panel for
    each other train or eval scalar (probe loss, positive-pair cosine, throughput, clustering, ...).
  - ``spectrum.png``: singular values sigma_k of the test-split features (the evaluated network, eval view) of the
    checkpoint at ``--step`` (default: the latest) and of the same encoder at initialisation, log scale, raw and as
    sigma_k / sigma_1, with each one's RankMe.
  - ``rankme.png``: RankMe over training: the logged values when the run logged them during training (a
    ``diagnostics`` evaluator with ``every`` > 0, e.g. ``--config.evals.diagnostics.every=-1 --config.eval_every=N``),
    otherwise computed here from every kept checkpoint and the initialisation, on the same test rows as the
    ``diagnostics`` evaluator (so its last point equals summary.json's ``diagnostics_rankme``). ``--rankme`` picks.
  - ``umap.png``: a 2-D UMAP (umap-learn, cosine metric) of up to ``--umap-max`` test features coloured by class.
  - ``plots.json``: the numbers drawn (singular values, RankMe per step and its source).
The run is set up exactly as ``python -m ssljax.evaluate`` sets it up (``train.setup`` with DIR/config.json), so the
features are the ones its evaluators scored. Errors end with one line ``ssljax: error: ...`` (exit 1 or 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np

PANEL_WIDTH, PANEL_HEIGHT = 4.3, 3.0


# =====================================================================================================================
# metrics.jsonl
# =====================================================================================================================
def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``workdir/metrics.jsonl`` as {key: (steps, values)} (float arrays, in file order; nulls left out).

    Keys are as logged: ``train/loss``, ``train/lr``, ``eval/knn_top1``, ``final/linear_top1``, ...
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no metrics.jsonl in {workdir} (is it the --workdir of a run?)')
    series: dict[str, list] = defaultdict(list)
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            step = row.get('step')
            if not isinstance(step, (int, float)):
                continue
            for key, value in row.items():
                if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
                    series[key].append((step, float(value)))
    return {
        k: (np.array([s for s, _ in v], np.float64), np.array([x for _, x in v], np.float64)) for k, v in series.items()
    }


def _is_accuracy(name: str) -> bool:
    return name.endswith('top1') or name == 'probe_acc'


def curve_panels(metrics: dict) -> list[tuple[str, list[tuple[str, np.ndarray, np.ndarray, str]]]]:
    """Groups the series into panels -> [(title, [(label, steps, values, kind)])], kind 'line' or 'final' (a
    marker: the value at the end of training). Values logged only at the end (``final/``) appear only in the
    accuracy and RankMe panels, next to their curves."""
    panels: dict[str, list] = {}
    order = ['train loss', 'learning rate', 'top-1 accuracy', 'RankMe']

    def add(title, item):
        panels.setdefault(title, []).append(item)

    for key in sorted(metrics):
        source, _, name = key.partition('/')
        steps, values = metrics[key]
        kind = 'final' if source == 'final' else 'line'
        if key == 'train/loss':
            add('train loss', ('loss', steps, values, kind))
        elif key == 'train/lr':
            add('learning rate', ('lr', steps, values, kind))
        elif _is_accuracy(name):
            add('top-1 accuracy', (key, steps, values, kind))
        elif name.endswith('rankme'):
            add('RankMe', (key, steps, values, kind))
        elif source != 'final':
            add(key, (key, steps, values, kind))
    titles = [t for t in order if t in panels] + [t for t in panels if t not in order]
    # a panel with nothing but end-of-training markers says nothing about training
    return [(t, panels[t]) for t in titles if any(kind == 'line' for *_, kind in panels[t])]


def plot_curves(metrics: dict, path: str, title: str = '') -> list[str]:
    """Draws `curve_panels` into one PNG at ``path``; returns the panel titles."""
    panels = curve_panels(metrics)
    if not panels:
        raise ValueError('metrics.jsonl has no series logged during training to draw')
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = new_figure((PANEL_WIDTH * ncols, PANEL_HEIGHT * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = matplotlib_rc()['axes.prop_cycle'].by_key()['color']
    for ax, (panel, items) in zip(axes.flat, panels):
        line_colors = {}
        for i, (label, steps, values, _kind) in enumerate(x for x in items if x[3] == 'line'):
            line_colors[label.partition('/')[2]] = colors[i % len(colors)]
            ax.plot(
                steps,
                values,
                '-',
                marker='.' if len(steps) < 30 else None,
                ms=4,
                lw=1.3,
                color=colors[i % len(colors)],
                label=label,
            )
        for label, steps, values, kind in items:
            if kind == 'final':
                color = line_colors.get(label.partition('/')[2], 'k')
                ax.plot(steps, values, '*', ms=10, color=color, label=label)
        if panel == 'train loss':  # a loss falling over decades reads better on a log scale
            values = np.concatenate([v for _, _, v, _ in items])
            if values.min() > 0 and values.max() / values.min() > 30:
                ax.set_yscale('log')
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel('step', fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if len(items) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return [t for t, _ in panels]


# =====================================================================================================================
# A finished run's features
# =====================================================================================================================
def load_run(workdir: str, overrides=()):
    """-> (config, run): DIR/config.json (with ``KEY=VALUE`` overrides) set up by ``train.setup`` as the loop and
    ``ssljax.evaluate`` set it up; ``run.state`` is the initial state (the encoder at initialisation)."""
    from ssljax import evaluate, train

    config = evaluate.load_run_config(workdir, list(overrides))
    return config, train.setup(config, workdir)


def checkpoint_steps(workdir: str) -> list[int]:
    from ssljax import checkpoint as ckpt_lib

    directory = os.path.join(workdir, 'checkpoints')
    return ckpt_lib.list_steps(workdir) if os.path.isdir(directory) else []


def restore(config, run, workdir: str, step: int):
    """The train state of checkpoint ``step``, restored into the structure of ``run.state``."""
    from ssljax import checkpoint as ckpt_lib

    ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
    try:
        return ckpt.restore(run.state, step)
    finally:
        ckpt.close()


def split_features(run, state, network: str = '', split: str = 'test') -> tuple[np.ndarray, np.ndarray]:
    """(float32 [N, D] features of ``split`` ('test' or 'train': the evaluators' kNN bank), int labels [N]) under
    ``network`` of ``state`` ('' = the objective's evaluation network), encoded by the run's evaluation context
    (eval view, device-resident), as its evaluators see them."""
    ctx = run.runner.ctx
    feats = ctx.features(state, network, split)
    values, labels = feats.host().copy(), np.asarray(feats.labels).copy()
    ctx.clear_cache()
    return values, labels


def diagnostics_rows(config, n: int) -> np.ndarray:
    """The test rows the run's ``diagnostics`` evaluator scores (``evaluation.builtin.diagnostics_rows``)."""
    from ssljax.evaluation import builtin

    max_examples = builtin.Diagnostics.defaults['max_examples']
    for settings in config.get('evals', {}).values():
        if settings.get('type') == 'diagnostics':
            max_examples = settings.get('max_examples', max_examples)
            break
    return builtin.diagnostics_rows(n, max_examples, int(config.seed))


def rankme_of(z: np.ndarray) -> float:
    from ssljax.evaluation import diagnostics

    return float(diagnostics.rankme(z))


def singular_values(z: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)


# =====================================================================================================================
# The feature figures
# =====================================================================================================================
def plot_spectrum(spectra: dict[str, np.ndarray], ranks: dict[str, float], path: str, title: str) -> None:
    """Singular values per label (raw and relative to the largest), log scale."""
    fig = new_figure((9.5, 3.6))
    ax_raw, ax_rel = fig.subplots(1, 2)
    for label, sigma in spectra.items():
        k = np.arange(1, sigma.size + 1)
        text = f'{label} (RankMe {ranks[label]:.1f})'
        ax_raw.semilogy(k, np.maximum(sigma, 1e-12), lw=1.5, label=text)
        ax_rel.semilogy(k, np.maximum(sigma / max(sigma[0], 1e-30), 1e-12), lw=1.5, label=text)
    ax_raw.set_ylabel(r'singular value $\sigma_k$')
    ax_rel.set_ylabel(r'$\sigma_k / \sigma_1$')
    for ax in (ax_raw, ax_rel):
        ax.set_xlabel('index k')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_rankme(steps, values, path: str, title: str, max_rank: int | None = None) -> None:
    fig = new_figure((5.5, 3.6))
    ax = fig.subplots()
    ax.plot(steps, values, 'o-', ms=4)
    if max_rank:
        ax.axhline(max_rank, color='k', ls='--', lw=1, label=f'largest possible: {max_rank}')
        ax.legend(fontsize=7)
    ax.set_xlabel('step')
    ax.set_ylabel('RankMe')
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def umap_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D UMAP of ``features`` (cosine metric, 15 neighbours or fewer for tiny sets, seeded, so one thread);
    needs umap-learn."""
    try:
        import umap
    except ImportError:
        raise RuntimeError('the UMAP figure needs umap-learn: pip install umap-learn (or pass --no-umap)') from None
    n = features.shape[0]
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(15, n - 1)),
        min_dist=0.1,
        metric='cosine',
        random_state=seed,
        n_jobs=1,
        init='spectral' if n > 16 else 'random',
    )
    return np.asarray(reducer.fit_transform(np.asarray(features, np.float32)))


def plot_umap(embedding: np.ndarray, labels: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    classes = np.unique(labels)
    cmap = matplotlib.colormaps['tab10' if classes.size <= 10 else 'tab20' if classes.size <= 20 else 'nipy_spectral']
    fig = new_figure((5.6, 5.0))
    ax = fig.subplots()
    for i, c in enumerate(classes):
        keep = labels == c
        color = cmap(i if classes.size <= 20 else i / max(classes.size - 1, 1))
        ax.scatter(embedding[keep, 0], embedding[keep, 1], s=4, color=color, label=str(c), alpha=0.8, linewidths=0)
    if classes.size <= 20:
        ax.legend(markerscale=3, fontsize=7, title='class', title_fontsize=7, loc='best')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def new_figure(size: tuple[float, float]):
    """A matplotlib Figure outside pyplot: saving it needs no backend, so a notebook's own backend (inline) and
    figures are left alone."""
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def matplotlib_rc():
    import matplotlib

    return matplotlib.rcParams


# =====================================================================================================================
# The command
# =====================================================================================================================
def logged_rankme(metrics: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """RankMe logged during training (eval/<name>_rankme, at one step or more), the final value appended."""
    keys = sorted(k for k in metrics if k.startswith('eval/') and k.endswith('rankme'))
    if not keys or not len(metrics[keys[0]][0]):
        return None
    steps, values = metrics[keys[0]]
    final = 'final/' + keys[0].partition('/')[2]
    if final in metrics and (not steps.size or metrics[final][0][-1] > steps[-1]):
        steps = np.concatenate([steps, metrics[final][0][-1:]])
        values = np.concatenate([values, metrics[final][1][-1:]])
    return steps, values


def make_plots(
    workdir: str,
    out: str | None = None,
    step: int | None = None,
    overrides=(),
    network: str = '',
    rankme: str = 'auto',
    umap: bool = True,
    umap_max: int = 2000,
    log=print,
) -> dict:
    """Writes the figures of the module docstring for ``workdir`` into ``out``; returns what was drawn (also
    written to ``out/plots.json``)."""
    out = out or os.path.join(workdir, 'figures')
    os.makedirs(out, exist_ok=True)
    result: dict = {'workdir': workdir, 'figures': {}}
    metrics = read_metrics(workdir)
    name = os.path.basename(os.path.normpath(workdir))
    result['curves'] = plot_curves(metrics, os.path.join(out, 'curves.png'), f'{name}: training curves')
    result['figures']['curves'] = os.path.join(out, 'curves.png')
    log(f'wrote {result["figures"]["curves"]}')

    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(
            f'no checkpoint in {os.path.join(workdir, "checkpoints")}: the curves are drawn, '
            'the feature figures need a checkpoint'
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f'no checkpoint of step {step} in {workdir}; it has steps {", ".join(map(str, steps))}')
    config, run = load_run(workdir, overrides)
    state = restore(config, run, workdir, step)
    feats, labels = split_features(run, state, network)
    init_feats, _ = split_features(run, run.state, network)
    result['step'] = step

    spectra = {f'step {step}': singular_values(feats), 'random init': singular_values(init_feats)}
    ranks = {'step %d' % step: rankme_of(feats), 'random init': rankme_of(init_feats)}
    path = os.path.join(out, 'spectrum.png')
    plot_spectrum(spectra, ranks, path, f'{name}: test features ({feats.shape[0]} x {feats.shape[1]}), {config.method}')
    result['figures']['spectrum'] = path
    result['singular_values'] = {k: v.tolist() for k, v in spectra.items()}
    result['rankme_all_test'] = ranks
    log(f'wrote {path}')

    if rankme != 'off':
        logged = logged_rankme(metrics) if rankme in ('auto', 'logged') else None
        if rankme == 'logged' and logged is None:
            raise ValueError(
                '--rankme=logged: the run logged no RankMe during training (a diagnostics evaluator with every > 0)'
            )
        if logged is not None:
            r_steps, r_values, source = logged[0], logged[1], 'logged during training (metrics.jsonl)'
        else:
            rows = diagnostics_rows(config, feats.shape[0])
            r_steps, r_values = [0], [rankme_of(init_feats[rows])]
            for s in steps:
                z = feats if s == step else split_features(run, restore(config, run, workdir, s), network)[0]
                r_steps.append(s)
                r_values.append(rankme_of(z[rows]))
            source = f'from the {len(steps)} kept checkpoints and the initialisation ({rows.size} test images)'
        path = os.path.join(out, 'rankme.png')
        plot_rankme(r_steps, r_values, path, f'{name}: RankMe over training, {source}', max_rank=int(min(feats.shape)))
        result['figures']['rankme'] = path
        result['rankme'] = {
            'source': source,
            'steps': [int(s) for s in r_steps],
            'values': [float(v) for v in r_values],
        }
        log(f'wrote {path}')

    if umap:
        n = feats.shape[0]
        rows = (
            np.arange(n)
            if n <= umap_max
            else np.sort(np.random.default_rng(int(config.seed)).choice(n, umap_max, replace=False))
        )
        embedding = umap_embedding(feats[rows], seed=int(config.seed))
        path = os.path.join(out, 'umap.png')
        plot_umap(embedding, labels[rows], path, f'{name}: UMAP of {rows.size} test features at step {step}')
        result['figures']['umap'] = path
        log(f'wrote {path}')

    with open(os.path.join(out, 'plots.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


def parse_args(argv: list[str]):
    from ssljax import cli
    from ssljax.cli import parse_known

    parser = argparse.ArgumentParser(prog=cli.prog('python -m ssljax.plot'), description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='the run directory (metrics.jsonl, config.json, checkpoints/)')
    parser.add_argument('--out', default=None, help='where the PNGs go (default: WORKDIR/figures)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint of the feature figures (default: latest)')
    parser.add_argument('--network', default='', help="'' (the method's evaluation network), online, target, teacher")
    parser.add_argument(
        '--rankme',
        default='auto',
        choices=('auto', 'logged', 'checkpoints', 'off'),
        help='RankMe over training: logged values when there are (auto), or from the checkpoints',
    )
    parser.add_argument('--no-umap', action='store_true', help='skip the UMAP figure')
    parser.add_argument('--umap-max', type=int, default=2000, help='test images in the UMAP (seeded subset)')
    return parse_known(parser, argv)


def run(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    from ssljax.cli import run_reporting_errors

    return run_reporting_errors(
        lambda: make_plots(
            args.workdir, args.out, args.step, overrides, args.network, args.rankme, not args.no_umap, args.umap_max
        )
    )


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
