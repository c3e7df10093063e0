"""DirectPred (Tian et al. 2021) and its comparison: BYOL whose predictor is chosen by one switch.

`predictor`: directpred (W_p from the eigendecomposition of the EMA correlation F, not trained), directcopy
(W_p = F/||F|| + eps I), linear (trained d x d), mlp (BYOL's 2-layer), none. `solver`: eigh | newton_schulz.

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, about 6 minutes):
    python -m ssljax.main --config configs/directpred.py --workdir workdirs/directpred_mnist
    python -m ssljax.main --config configs/directpred.py:predictor=linear --workdir workdirs/linear_mnist
CIFAR-10 image folders under solo-learn's BYOL recipe (ResNet-18, batch 256, LARS lr 1.0, 40 epochs):
    python -m ssljax.main --config configs/directpred.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/dp_c10
Paper defaults (STL-10 code): rho 0.3, eps 0.01, freq 1, no centring, sqrt transform, projector 512-128.
`predictor_write`: after_freq (default: W_p written after every freq-th step, never trained, identity at first) |
reference (luckmatters ssl/real-dataset/byol_trainer.py: written after steps 1, freq + 1, ..., trained by the
optimizer in between, random init). `directcopy_norm`: frobenius (default, DirectCopy's paper) | spectral | none
(the public code's unnormalised F + eps I). BatchNorm per view (bn_per_view True), as the paper's code.
The comparison table and the eigen-alignment plots: experiments/directpred/.
"""
from configs import byol, common


def get_config(arg=None):
    c, a = common.method_config('directpred', arg, predictor='directpred', solver='eigh')
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    byol.byol_objective(c, embedded)
    c.objective.predictor = a.predictor
    c.objective.rho = 0.3
    c.objective.eps = 0.01
    c.objective.freq = 1
    c.objective.predictor_write = 'after_freq'
    c.objective.center = False
    c.objective.transform = 'sqrt'
    c.objective.solver = a.solver
    c.objective.directcopy_norm = 'frobenius'
    if not embedded:
        common.solo_cifar_optimizer(c, lr=1.0, weight_decay=1e-5)
    return common.finish(c, a)
