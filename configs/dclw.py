"""DCLW (Yeh et al. 2022): DCL with the von Mises-Fisher weight w_i = 2 - exp(s_ii/sigma) / mean_j exp(s_jj/sigma).

    python -m ssljax.main --config configs/dclw.py --workdir workdirs/dclw_mnist
    python -m ssljax.main --config configs/dclw.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/dclw_c10
sigma 0.5 (the paper), temperature 0.1; objective.weight_norm 'mean' (the paper's, = 2 - B softmax, as the
third-party raminnakhli/Decoupled-Contrastive-Learning code at its HEAD and lightly's DCLWLoss) or 'sum' (2 - softmax,
that repository's code at one commit only, 50991ef): all the objective's defaults. Otherwise as configs/dcl.py.
"""

from configs import dcl


def get_config(arg=None):
    return dcl.dcl_setup('dclw', arg)
