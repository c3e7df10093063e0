"""MoCHi (Kalantidis et al. 2020): MoCo v2 with synthetic hard negatives mixed from the queue's hardest keys.

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/mochi.py --workdir workdirs/mochi_mnist
CIFAR-10 image folders (solo-learn's MoCo v2+ recipe, see configs/mocov2.py, plus MoCHi):
    python -m ssljax.main --config configs/mochi.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/mochi_c10

(N, s, s') = (objective.n_hard, n_mix, n_mix_query): the paper's (1024, 1024, 128) on CIFAR; on the embedded default
the same fractions of its 2048-key queue (the paper's queue is 16384): (128, 128, 16). Mixing starts after
objective.mix_start_epochs (10 on CIFAR, 3 of 30 on MNIST; the paper warms up without mixing first, the exact count
is ours) or objective.mix_start_steps when >= 0. n_hard > queue_size is an error before compiling. The CIFAR values
are the objective's defaults (ssljax/objectives/moco.py). The embedded variant shares MoCo v2's embedded recipe
(the head's output centred per batch, the budget's LARS: configs/mocov2.py). Measured, 15 epochs
(`--config.epochs=15`, 2 CPU cores at load 10-14, 1005 s): kNN 82.3 / linear 91.3 / online probe 74.3, loss 7.667 at
step 15 -> 7.287 at 225 (before MoCo v2's fix: 65.5 / 81.0 / 45.1; experiments/contrastive/README.md).
"""

from configs import common, mocov2


def get_config(arg=None):
    c, a = common.method_config('mochi', arg)
    embedded = a.dataset == 'mnist'
    mocov2.moco_v2_setup(c, embedded)
    if embedded:
        common.recipe(
            c,
            "the embedded MNIST budget: the paper's fractions of a 2048-key queue, mixing after 3 of 30 epochs",
            n_hard=128,
            n_mix=128,
            n_mix_query=16,
            mix_start_epochs=3.0,
        )
    return common.finish(c, a)
