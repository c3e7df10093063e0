"""DINO (Caron et al. 2021): self-distillation from a centred, sharpened EMA teacher, with multi-crop.

Embedded default:  python -m ssljax.main --config configs/dino.py --workdir workdirs/dino_mnist
CIFAR-10:          python -m ssljax.main --config configs/dino.py:dataset=cifar10 --config.dataset=image_folder \
                       --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/dino_c10
Published defaults: head 3 layers (2048 hidden), bottleneck 256, weight-normed output 65536; student tau 0.1,
teacher tau 0.04 -> 0.07 over 30 epochs; centre momentum 0.9; teacher EMA 0.996 -> 1; 2 global + 8 local crops.
Here: smaller output (4096 embedded, 16384 CIFAR) and 4 / 6 local crops, to fit the budgets.
"""
from configs import common


def get_config(arg=None):
    c, a = common.method_config('dino', arg)
    embedded = a.dataset == 'mnist'
    c.augment.recipe = 'multicrop'
    c.augment.n_local = 4 if embedded else 6
    c.objective.head_out = 4096 if embedded else 16384
    c.objective.head_hidden = 512 if embedded else 2048
    c.objective.head_bottleneck = 128 if embedded else 256
    c.objective.head_layers = 3
    c.objective.head_bn = False
    c.objective.norm_last_layer = True
    c.objective.student_temp = 0.1
    c.objective.teacher_temp = 0.07
    c.objective.warmup_teacher_temp = 0.04
    c.objective.warmup_teacher_temp_epochs = 5.0 if embedded else 30.0
    c.objective.center_momentum = 0.9
    c.objective.ema_base = 0.996 if not embedded else 0.99
    c.objective.ema_final = 1.0
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-5
    if not embedded:
        common.solo_cifar_optimizer(c, lr=0.3, weight_decay=1e-6)
    return common.finish(c, a)
