"""Every loss that lightly (1.6.0, PyTorch) also has, on the same random arrays: value and gradient against autograd.

Needs the optional extra ``parity`` (``pip install -e .[parity]``: torch CPU and lightly, see pyproject.toml); the
module is skipped with one line when it is absent.

Where the two libraries define the same loss with a different constant factor or reduction, the factor is written
once below (``CONVENTIONS``) with where it comes from; every comparison uses those names, nothing else is rescaled.

lightly 1.6.0's package ``lightly.loss`` (its ``__init__``) imports ``dense_relational_utils`` (torchvision.ops
roi_align) and ``lightly.models.utils`` imports ``torchvision.ops.StochasticDepth``; torchvision's PyPI build does not
load beside the CPU torch wheel (``operator torchvision::nms does not exist``). :func:`lightly_module` therefore
loads the loss modules themselves without running those package ``__init__`` files, and, only where torchvision
cannot be imported, lets ``lightly.models.utils`` import a placeholder ``StochasticDepth`` that raises if it is ever
built (no loss here builds one).
"""
import importlib
import importlib.util
import pathlib
import sys
import types

import numpy as np
import pytest

REASON = 'parity tests need the optional extra: pip install -e .[parity] (torch CPU, lightly)'
torch = pytest.importorskip('torch', reason=REASON)
pytest.importorskip('lightly', reason=REASON)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssljax.models.vit import patchify  # noqa: E402
from ssljax.objectives import losses  # noqa: E402
from ssljax.objectives.mae import mae_loss  # noqa: E402
from ssljax.objectives.simmim import simmim_loss  # noqa: E402

# ----- conventions: how lightly's value relates to ours, each written once -------------------------------------------
CONVENTIONS = {
    # SimCLR's own code sums the two views' mean cross-entropies (losses.nt_xent); lightly's NTXentLoss takes one
    # mean over the 2B anchors (= losses.nt_xent_mean, our reduction 'mean').
    'nt_xent_sum_of_view_means': 2.0,
    # losses.dcl_loss sums the two directions (u, v) and (v, u); lightly's DCLLoss returns 0.5 (loss0 + loss1).
    'dcl_sum_of_directions': 2.0,
    # BYOL's regression loss ||n(p) - n(z)||^2 = 2 - 2 cos (losses.normalized_mse); lightly's
    # NegativeCosineSimilarity is -cos: ours = BYOL_OFFSET + BYOL_SCALE * lightly, per view order.
    'byol_offset': 2.0,
    'byol_scale': 2.0,
    # SimSiam: ours is -1/2 [cos(p_a, z_b) + cos(p_b, z_a)]; lightly's examples call NegativeCosineSimilarity on
    # each order and average the two: the factor below multiplies their sum.
    'simsiam_order_mean': 0.5,
}
CONVENTIONS_ONE = (
    'Barlow Twins (BatchNorm-standardised C / B, same lambda), VICReg (the reference\'s variance mean over views), '
    'MoCo InfoNCE against a queue, DINO (mean over the T V - T view pairs), MAE / SimMIM reconstruction: factor 1'
)


def lightly_module(name: str):
    """lightly's module ``lightly.<name>`` (e.g. 'loss.ntx_ent_loss'), its parent packages' __init__ files not run."""
    spec = importlib.util.find_spec('lightly')
    root = pathlib.Path(spec.submodule_search_locations[0])
    for package in ('lightly.loss', 'lightly.models', 'lightly.models.modules'):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(root.joinpath(*package.split('.')[1:]))]
            sys.modules[package] = module
    try:
        import torchvision.ops  # noqa: F401
        placeholder = False
    except Exception:  # torchvision absent, or its PyPI build failing beside the CPU torch (module docstring)
        placeholder = True
        tv, ops = types.ModuleType('torchvision'), types.ModuleType('torchvision.ops')

        class StochasticDepth:  # imported by lightly.models.utils at module level, never built by a loss
            def __init__(self, *args, **kwargs):
                raise RuntimeError('torchvision is not importable here: StochasticDepth is a placeholder')

        ops.StochasticDepth, tv.ops = StochasticDepth, ops
        saved = {k: sys.modules.get(k) for k in ('torchvision', 'torchvision.ops')}
        sys.modules.update({'torchvision': tv, 'torchvision.ops': ops})
    try:
        return importlib.import_module(f'lightly.{name}')
    finally:
        if placeholder:
            for key, value in saved.items():
                if value is None:
                    sys.modules.pop(key, None)
                else:
                    sys.modules[key] = value


ntx = lightly_module('loss.ntx_ent_loss')
dcl = lightly_module('loss.dcl_loss')
negcos = lightly_module('loss.negative_cosine_similarity')
barlow = lightly_module('loss.barlow_twins_loss')
vicreg = lightly_module('loss.vicreg_loss')
dino = lightly_module('loss.dino_loss')
lightly_utils = lightly_module('models.utils')

def arrays(seed, *shapes, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=s) * scale).astype(np.float32) for s in shapes]


def t(x, grad=True):
    return torch.tensor(np.asarray(x, np.float64), requires_grad=grad)


def assert_close(actual, desired, what, rtol=2e-5):
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    atol = 1e-5 * max(np.abs(desired).max(), 1e-12)  # float32 rounding, relative to the largest entry
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=what)


def compare(name, ours_fn, theirs_fn, inputs, argnums, factor=1.0, offset=0.0):
    """ours(inputs) = offset + factor * theirs(inputs), and the gradients of both sides w.r.t. ``argnums`` agree.

    ``ours_fn`` takes jnp arrays; ``theirs_fn`` torch float64 tensors (autograd on those in ``argnums``)."""
    value, grads = jax.value_and_grad(ours_fn, argnums=argnums)(*[jnp.asarray(x) for x in inputs])
    tensors = [t(x, grad=i in argnums) for i, x in enumerate(inputs)]
    theirs = theirs_fn(*tensors)
    theirs.backward()
    assert_close(value, offset + factor * theirs.item(), f'{name}: value')
    for g, i in zip(grads, argnums):
        grad = tensors[i].grad  # None where autograd never reached the input (a stop-gradient): zero
        desired = np.zeros(inputs[i].shape) if grad is None else grad.numpy()
        assert_close(g, factor * desired, f'{name}: gradient of input {i}')


# ----- contrastive ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_nt_xent(temperature):
    inputs = arrays(0, (16, 8), (16, 8))
    lightly_loss = lambda a, b: ntx.NTXentLoss(temperature=temperature)(a, b)  # noqa: E731
    compare('NT-Xent (SimCLR, sum of view means)', lambda a, b: losses.nt_xent(a, b, temperature), lightly_loss,
            inputs, (0, 1), factor=CONVENTIONS['nt_xent_sum_of_view_means'])
    compare('NT-Xent (mean over anchors)', lambda a, b: losses.nt_xent_mean(a, b, temperature), lightly_loss,
            inputs, (0, 1))


def test_moco_infonce_with_a_queue():
    """lightly's NTXentLoss with a memory bank: the bank holds the negatives, out1 the positive keys (no gradient)."""
    q, k, queue = arrays(1, (8, 16), (8, 16), (64, 16))
    queue = queue / np.linalg.norm(queue, axis=1, keepdims=True)  # lightly keeps a normalised bank and uses it as is

    def lightly_loss(q_t, k_t, queue_t):
        loss = ntx.NTXentLoss(temperature=0.2, memory_bank_size=(64, 16))
        loss.memory_bank.bank = queue_t.detach().clone()
        return loss(q_t, k_t)

    compare('MoCo InfoNCE with a queue', lambda q, k, Q: losses.moco_infonce(q, k, Q, 0.2), lightly_loss,
            [q, k, queue], (0,))
    compare('DenseCL global InfoNCE', lambda q, k, Q: losses.densecl_global_loss(q, k, Q, 0.2), lightly_loss,
            [q, k, queue], (0,))


def test_densecl_dense_loss():
    """lightly's DenseCL example: select_most_similar picks each query cell's key cell by backbone-feature cosine,
    then NTXentLoss with a memory bank over the N S cells."""
    q_grid, k_grid, q_bb, k_bb, queue = arrays(2, (4, 9, 8), (4, 9, 8), (4, 9, 12), (4, 9, 12), (32, 8))
    queue = queue / np.linalg.norm(queue, axis=1, keepdims=True)

    def lightly_loss(q_grid_t, k_grid_t, q_bb_t, k_bb_t, queue_t):
        key = lightly_utils.select_most_similar(q_bb_t, k_bb_t, k_grid_t)
        loss = ntx.NTXentLoss(temperature=0.2, memory_bank_size=(32, 8))
        loss.memory_bank.bank = queue_t.detach().clone()
        return loss(q_grid_t.flatten(end_dim=1), key.flatten(end_dim=1))

    compare('DenseCL dense InfoNCE', lambda *x: losses.densecl_dense_loss(*x, 0.2), lightly_loss,
            [q_grid, k_grid, q_bb, k_bb, queue], (0,))


def test_dcl():
    inputs = arrays(3, (16, 8), (16, 8))
    compare('DCL', lambda a, b: losses.dcl_loss(a, b, 0.1), lambda a, b: dcl.DCLLoss(temperature=0.1)(a, b),
            inputs, (0, 1), factor=CONVENTIONS['dcl_sum_of_directions'])


@pytest.mark.filterwarnings('ignore:To copy construct from a tensor')  # inside lightly's DCLW weights
@pytest.mark.parametrize('weight_norm', ['mean', 'sum'])
def test_dclw(weight_norm):
    """Value against lightly's DCLWLoss ('mean' form). lightly detaches the weight w (negative_mises_fisher_weights
    takes out0.detach()), ours lets the gradient through w (as raminnakhli/Decoupled-Contrastive-Learning): the
    gradient is compared with lightly's DCLLoss given the same weight without the detach."""
    inputs = arrays(4, (16, 8), (16, 8))
    sigma, batch = 0.5, inputs[0].shape[0]
    scale = batch if weight_norm == 'mean' else 1.0

    def weight(out0, out1):  # lightly hands weight_fn the L2-normalised projections
        return 2.0 - scale * torch.softmax(torch.einsum('nm,nm->n', out0, out1) / sigma, dim=0)

    ours = lambda a, b: losses.dcl_loss(a, b, 0.1, sigma, weight_norm)  # noqa: E731
    compare(f'DCLW ({weight_norm})', ours, lambda a, b: dcl.DCLLoss(temperature=0.1, weight_fn=weight)(a, b),
            inputs, (0, 1), factor=CONVENTIONS['dcl_sum_of_directions'])
    if weight_norm == 'mean':
        theirs = dcl.DCLWLoss(temperature=0.1, sigma=sigma)(t(inputs[0], False), t(inputs[1], False)).item()
        value = ours(*map(jnp.asarray, inputs))
        assert_close(value, CONVENTIONS['dcl_sum_of_directions'] * theirs, "DCLW: value against lightly's DCLWLoss")


# ----- non-contrastive -----------------------------------------------------------------------------------------------

def test_byol_and_simsiam_negative_cosine():
    p_a, p_b, z_a, z_b = arrays(5, (16, 8), (16, 8), (16, 8), (16, 8))
    crit = negcos.NegativeCosineSimilarity()
    compare('BYOL normalised MSE (one order)', losses.normalized_mse, lambda p, z: crit(p, z), [p_a, z_b], (0,),
            factor=CONVENTIONS['byol_scale'], offset=CONVENTIONS['byol_offset'])
    both_orders = lambda pa, pb, za, zb: crit(pa, zb.detach()) + crit(pb, za.detach())  # noqa: E731
    compare('BYOL symmetrised loss', losses.byol_loss, both_orders, [p_a, p_b, z_a, z_b], (0, 1),
            factor=CONVENTIONS['byol_scale'], offset=2 * CONVENTIONS['byol_offset'])
    compare('SimSiam negative cosine', losses.simsiam_loss, both_orders, [p_a, p_b, z_a, z_b], (0, 1, 2, 3),
            factor=CONVENTIONS['simsiam_order_mean'])  # z's gradient is 0 on both sides (stop-gradient)


def test_barlow_twins():
    inputs = arrays(6, (32, 16), (32, 16), scale=2.0)
    compare('Barlow Twins', lambda a, b: losses.barlow_twins_loss(a, b, 0.0051),
            lambda a, b: barlow.BarlowTwinsLoss(lambda_param=0.0051)(a, b), inputs, (0, 1))


def test_vicreg():
    inputs = arrays(7, (32, 16), (32, 16), scale=0.6)  # std < 1: the variance hinge is active
    compare('VICReg', lambda a, b: losses.vicreg_loss(a, b, 25.0, 25.0, 1.0)[0],
            lambda a, b: vicreg.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0)(a, b), inputs, (0, 1))

    def solo_form(a, b):  # solo-learn's variance_loss sums the views: lightly's terms, recombined
        return (25.0 * vicreg.invariance_loss(a, b) + 25.0 * (vicreg.variance_loss(a) + vicreg.variance_loss(b))
                + 1.0 * (vicreg.covariance_loss(a) + vicreg.covariance_loss(b)))

    compare("VICReg (variance_views='sum')",
            lambda a, b: losses.vicreg_loss(a, b, 25.0, 25.0, 1.0, variance_views='sum')[0], solo_form, inputs, (0, 1))


@pytest.mark.parametrize('n_local', [0, 2])
def test_dino(n_local):
    """T = 2 teacher (global) views, V = 2 + n_local student views, a non-zero centre, the student's gradient."""
    k, b = 32, 8
    views = arrays(8, *[(b, k)] * (4 + n_local), scale=3.0)
    teacher, student = views[:2], views[2:]
    (center,) = arrays(9, (k,))

    def ours(*student):
        return losses.dino_loss(list(student), [jnp.asarray(x) for x in teacher], jnp.asarray(center), 0.1, 0.04)

    def theirs(*student):
        loss = dino.DINOLoss(output_dim=k, teacher_temp=0.04, student_temp=0.1)
        loss.center = t(center, False).reshape(1, 1, k)
        return loss([t(x, False) for x in teacher], list(student), teacher_temp=0.04)

    compare('DINO', ours, theirs, student, tuple(range(len(student))))


# ----- masked image modelling ----------------------------------------------------------------------------------------
# lightly has no loss module for MAE / SimMIM: its examples (examples/pytorch/mae.py, simmim.py) patchify with
# lightly.models.utils.patchify, gather the masked patches and apply torch.nn.MSELoss / L1Loss. That is compared here
# (MAE without norm_pix_loss, which lightly's example does not use).

def masked_patches(seed, b=4, side=8, p=4, c=3, n_masked=2):
    rng = np.random.default_rng(seed)
    n = (side // p) ** 2
    mask = np.zeros((b, n), bool)
    for row in mask:
        row[rng.choice(n, n_masked, replace=False)] = True  # the same count per image, as lightly's gather needs
    images = rng.normal(size=(b, side, side, c)).astype(np.float32)
    return images, mask, p


def lightly_masked(images_nhwc_t, p, mask):
    patches = lightly_utils.patchify(images_nhwc_t.permute(0, 3, 1, 2), p)  # lightly: NCHW images
    idx = torch.tensor(np.stack([np.flatnonzero(m) for m in mask]))
    return lightly_utils.get_at_index(patches, idx)


def test_mae_reconstruction():
    images, mask, p = masked_patches(10)
    (pred,) = arrays(11, (images.shape[0], mask.shape[1], p * p * images.shape[-1]))

    def theirs(pred_t, images_t):
        idx = torch.tensor(np.stack([np.flatnonzero(m) for m in mask]))
        return torch.nn.MSELoss()(lightly_utils.get_at_index(pred_t, idx), lightly_masked(images_t, p, mask))

    compare('MAE reconstruction (masked-patch MSE)',
            lambda pred, x: mae_loss(pred, patchify(x, p), jnp.asarray(mask), norm_pix_loss=False), theirs,
            [pred, images], (0, 1))


def test_simmim_reconstruction():
    images, mask, p = masked_patches(12)
    (recon,) = arrays(13, images.shape)
    side = images.shape[1] // p
    pixel_mask = np.kron(mask.reshape(-1, side, side), np.ones((p, p), bool))  # each masked patch's pixels

    def theirs(recon_t, images_t):
        return torch.nn.L1Loss()(lightly_masked(recon_t, p, mask), lightly_masked(images_t, p, mask))

    compare('SimMIM reconstruction (masked L1)', lambda r, x: simmim_loss(x, r, jnp.asarray(pixel_mask)), theirs,
            [recon, images], (0, 1))

