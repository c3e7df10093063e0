"""DINO with the published multi-crop and head, for memory measurements at scale (BENCHMARKS.md, "Memory at scale").

    python -m ssljax.bench --memory --topology v4-1024 \
        --config experiments/scale/dino_multicrop.py:dataset=imagenet2012,backbone=vit_giant \
        --config.model.patch_size=14 --config.model.scan=true --config.model.remat=block --config.batch_size=2048

configs/dino.py with, on top: 2 global crops at augment.size and ``n_local`` (default 10) local crops of
``local_size`` px (default 98 = 7 patches of 14: DINO's 96 px rounded to the patch grid), and the objective's own
published head (65536 prototypes, 2048 hidden, bottleneck 256), teacher schedule and joint BatchNorm over crops,
instead of the solo-learn CIFAR values configs/dino.py takes for non-MNIST datasets.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from configs import common, dino  # noqa: E402


def get_config(arg=None):
    a = common.parse_arg(
        arg,
        dataset='imagenet2012',
        backbone='vit_giant',
        epochs=-1.0,
        batch_size=0,
        image_size=0,
        n_local=10,
        local_size=98,
    )
    base = f'dataset={a.dataset},backbone={a.backbone}' + (f',image_size={a.image_size}' if a.image_size else '')
    c = dino.get_config(base)
    common.set_views(c, 'multicrop', n_local=a.n_local, local_size=a.local_size)
    published = common.objective_defaults('dino')
    for key in ('head_out', 'head_hidden', 'head_bottleneck', 'warmup_teacher_temp_epochs', 'ema_base', 'bn_per_view'):
        c.objective[key] = published[key]
    return common.finish(c, a)
