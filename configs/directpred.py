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
The objective's defaults are the paper code's (ssljax/objectives/directpred.py); the overrides below are BYOL's
solo-learn CIFAR recipe (heads, target EMA) and the variant arguments predictor and solver.
"""

from configs import byol, common


def get_config(arg=None):
    c, a = common.method_config('directpred', arg, objective_args=('predictor', 'solver'))
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    if not embedded:
        common.recipe(
            c,
            "solo-learn's CIFAR BYOL: 4096-256 projector and predictor",
            projector_hidden=(4096,),
            projector_dim=256,
            predictor_hidden=(4096,),
            predictor_dim=256,
        )
    common.recipe(c, byol.SOLO_EMA, ema_base=0.99)
    if not embedded:
        common.solo_cifar_optimizer(c, lr=1.0, weight_decay=1e-5)
    return common.finish(c, a)
