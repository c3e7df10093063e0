"""DirectPred's analysis of a *trained* linear predictor, as pictures (Tian et al. 2021, section 4).

    python experiments/directpred/analysis.py --workdir RUN [--out experiments/directpred]

RUN is a run of ``configs/directpred.py:predictor=linear`` with checkpoints kept along training (e.g.
``--config.checkpoint_every=15 --config.keep_checkpoints=20``); that objective keeps the EMA correlation F of the
online projections in its state next to the trained predictor W_p (y = W_p z, stored as kernel = W_p^T).
For every checkpoint, with F = U diag(s) U^T (s descending):
  - eigen-alignment  cos(W_p u_j, u_j): 1 when u_j is an eigenvector of W_p;
  - the predictor's eigenvalue along u_j, p_j = u_j^T W_p u_j, against s_j: the paper finds p_j ~ sqrt(s_j),
    which is what DirectPred then sets in closed form.
Writes eigen_alignment.png (alignment over training, top eigenvectors), eigenvalues.png (p_j against s_j at the
last checkpoint, log-log, with the best fit of p = c s^alpha and the alpha = 1/2 line) and analysis.json (the numbers).
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssljax import checkpoint  # noqa: E402


def spectra(state) -> dict:
    """Eigen-alignment and eigenvalue pairs of one checkpoint's (W_p, F)."""
    W = np.asarray(state['params']['predictor']['kernel'], np.float64).T
    F = np.asarray(state['objective_state']['corr'], np.float64)
    s, U = np.linalg.eigh((F + F.T) / 2)
    order = np.argsort(s)[::-1]
    s, U = s[order], U[:, order]
    WU = W @ U
    cos = np.sum(WU * U, axis=0) / np.maximum(np.linalg.norm(WU, axis=0), 1e-12)
    p = np.sum(U * WU, axis=0)
    return {'s': s, 'cos': cos, 'p': p}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--out', default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument('--top', type=int, default=16, help='eigenvectors shown in the alignment plot')
    args = parser.parse_args()
    steps = checkpoint.list_steps(args.workdir)
    if 'corr' not in checkpoint.load_tree(args.workdir, steps[-1])['objective_state']:
        raise SystemExit(f'{args.workdir} keeps no correlation matrix: use configs/directpred.py:predictor=linear')
    results = {step: spectra(checkpoint.load_tree(args.workdir, step)) for step in steps}
    os.makedirs(args.out, exist_ok=True)

    top = min(args.top, len(results[steps[-1]]['s']))
    cos = np.array([results[s]['cos'][:top] for s in steps])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    cmap = plt.get_cmap('viridis')
    for j in range(top):
        ax.plot(
            steps, cos[:, j], color=cmap(j / max(top - 1, 1)), lw=1.2, label=f'j={j + 1}' if j in (0, top - 1) else None
        )
    ax.plot(steps, cos.mean(1), 'k--', lw=2, label=f'mean of top {top}')
    ax.set_xlabel('training step')
    ax.set_ylabel(r'eigen-alignment $\cos(W_p u_j, u_j)$')
    ax.set_ylim(min(0.0, cos.min()), 1.02)
    ax.set_title('Trained linear predictor vs eigenvectors of F')
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, 'eigen_alignment.png'), dpi=120)

    last = results[steps[-1]]
    keep = (last['s'] > last['s'][0] * 1e-6) & (last['p'] > 0)
    log_s, log_p = np.log(last['s'][keep]), np.log(last['p'][keep])
    alpha, log_c = np.polyfit(log_s, log_p, 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.loglog(last['s'][keep], last['p'][keep], 'o', ms=4, label=r'$p_j = u_j^T W_p u_j$')
    grid = np.exp(np.linspace(log_s.min(), log_s.max(), 50))
    ax.loglog(grid, np.exp(log_c) * grid**alpha, 'r-', label=rf'fit: $p \propto s^{{{alpha:.2f}}}$')
    anchor = np.exp(np.median(log_p) - 0.5 * np.median(log_s))
    ax.loglog(grid, anchor * grid**0.5, 'k--', label=r'$p \propto s^{1/2}$ (DirectPred)')
    ax.set_xlabel(r'eigenvalue $s_j$ of F')
    ax.set_ylabel(r'predictor eigenvalue $p_j$')
    ax.set_title(f'Step {steps[-1]}')
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, 'eigenvalues.png'), dpi=120)

    summary = {
        'workdir': args.workdir,
        'steps': steps,
        'mean_alignment_top': {int(s): float(results[s]['cos'][:top].mean()) for s in steps},
        'mean_alignment_all': {int(s): float(results[s]['cos'].mean()) for s in steps},
        'fit_exponent_alpha': float(alpha),
        'eigenvalues_used_in_fit': int(keep.sum()),
    }
    with open(os.path.join(args.out, 'analysis.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == '__main__':
    main()
