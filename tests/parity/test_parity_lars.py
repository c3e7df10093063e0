"""ssljax's LARS against solo-learn's, written as a torch optimizer (solo/utils/lars.py, transcribed in the
algorithm's own terms): the same parameters and gradients, two steps, clip_lr on and off, biases and norms excluded
or not. Skipped with one line without the optional extra ``parity``."""
import numpy as np
import pytest

REASON = 'parity tests need the optional extra: pip install -e .[parity] (torch CPU)'
torch = pytest.importorskip('torch', reason=REASON)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import common  # noqa: E402
from ssljax import optim  # noqa: E402


class SoloLARS(torch.optim.Optimizer):
    """solo-learn's LARS: SGD (PyTorch's momentum placement, dampening 0) on d = r (g + wd w), where for a tensor
    that is adapted (ndim != 1, or every tensor when exclude_bias_n_norm is off) with non-zero ||w|| and ||g||
    r = eta ||w|| / (||g|| + wd ||w|| + eps), min(r / lr, 1) under clip_lr; any other tensor takes d = g (no decay)."""

    def __init__(self, params, lr, momentum, weight_decay, eta, clip_lr, exclude_bias_n_norm, eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr,
                                      exclude_bias_n_norm=exclude_bias_n_norm, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            wd, lr = group['weight_decay'], group['lr']
            for p in group['params']:
                d = p.grad
                w_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                if (p.ndim != 1 or not group['exclude_bias_n_norm']) and w_norm != 0 and g_norm != 0:
                    ratio = group['eta'] * w_norm / (g_norm + w_norm * wd + group['eps'])
                    if group['clip_lr']:
                        ratio = min(ratio / lr, 1)
                    d = (d + wd * p) * ratio
                state = self.state[p]
                if 'buf' not in state:
                    state['buf'] = d.clone()
                else:
                    state['buf'].mul_(group['momentum']).add_(d)
                p.add_(state['buf'], alpha=-lr)


def problem(seed):
    rng = np.random.default_rng(seed)
    shapes = {'kernel': (3, 3, 4, 8), 'bias': (8,), 'scale': (8,), 'dense': (8, 5), 'zero_grad': (4, 4)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = []
    for _ in range(2):
        g = {k: (rng.normal(size=s) * 0.05).astype(np.float32) for k, s in shapes.items()}
        g['dense'] *= 1e4  # its trust ratio falls below lr: the unclipped branch of clip_lr
        g['zero_grad'][:] = 0.0
        grads.append(g)
    return params, grads


@pytest.mark.parametrize('exclude', [True, False])
@pytest.mark.parametrize('clip', [True, False])
def test_lars_steps_equal_solo_learns(clip, exclude):
    lr, wd, eta, momentum = 0.4, 1e-4, 0.02, 0.9
    params, grads = problem(0)
    c = common.base_config('simclr', 'mnist')
    o = c.optimizer
    o.name, o.lr, o.lr_scaling, o.weight_decay, o.momentum = 'lars', lr, 'none', wd, momentum
    o.lars_eta, o.lars_clip, o.exclude_bias_and_norm = eta, clip, exclude
    o.warmup_steps, o.final_lr = 0, lr  # a constant learning rate
    tx, _ = optim.create_optimizer(c, total_steps=10, steps_per_epoch=5)
    tree = {'encoder': {k: jnp.asarray(v) for k, v in params.items()}}
    state = tx.init(tree)

    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    solo = SoloLARS(list(tensors.values()), lr=lr, momentum=momentum, weight_decay=wd, eta=eta, clip_lr=clip,
                    exclude_bias_n_norm=exclude)
    for step in range(2):
        before = {k: v.detach().numpy().copy() for k, v in tensors.items()}
        for k, v in tensors.items():
            v.grad = torch.tensor(grads[step][k], dtype=torch.float64)
        solo.step()
        updates, state = tx.update({'encoder': {k: jnp.asarray(v) for k, v in grads[step].items()}}, state, tree)
        tree = jax.tree.map(lambda p, u: p + u, tree, updates)
        for k in params:
            desired = tensors[k].detach().numpy() - before[k]
            np.testing.assert_allclose(np.asarray(updates['encoder'][k]), desired, rtol=2e-5,
                                       atol=1e-6 * np.abs(desired).max(), err_msg=f'step {step} {k}')
    if clip:  # both branches of clip_lr were taken
        r = eta * np.linalg.norm(params['dense']) / np.linalg.norm(grads[0]['dense'])
        assert r < lr < eta * np.linalg.norm(params['kernel']) / np.linalg.norm(grads[0]['kernel'])
