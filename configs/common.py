"""Defaults shared by every method's config, and the parser for variant arguments.

Every key a run reads is defined here or in the method's file, so ``--config.KEY=VALUE`` overrides are checked
against a complete tree (an unknown key or a value of the wrong type is an error before anything compiles).
"""
from __future__ import annotations

import ml_collections

# Datasets with an image size and class count known in advance; image folders take both from the data.
DATASET_DEFAULTS = {
    'mnist': dict(image_size=28, num_classes=10),
    'digits': dict(image_size=8, num_classes=10),
    'cifar10': dict(image_size=32, num_classes=10),
    'cifar100': dict(image_size=32, num_classes=100),
    'stl10': dict(image_size=96, num_classes=10),
    'imagenet2012': dict(image_size=224, num_classes=1000),
    'image_folder': dict(image_size=32, num_classes=0),
}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'dataset=cifar10,backbone=resnet18' -> ConfigDict; keys must be among ``defaults`` (typed by them)."""
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or '').split(',')):
        if '=' not in item:
            raise ValueError(f'config argument {item!r} is not of the form key=value')
        key, value = item.split('=', 1)
        if key not in defaults:
            raise ValueError(f'unknown config argument {key!r}; known: {", ".join(sorted(defaults))}')
        kind = type(defaults[key])
        parsed[key] = value.lower() in ('1', 'true', 'yes') if kind is bool else kind(value)
    return parsed


def base_config(method: str, dataset: str = 'mnist', backbone: str = 'resnet_tiny') -> ml_collections.ConfigDict:
    """The keys every run has. Method files fill in ``objective``, ``augment`` and optimizer settings."""
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f'unknown dataset {dataset!r}; known: {", ".join(sorted(DATASET_DEFAULTS))}')
    ds = DATASET_DEFAULTS[dataset]
    c = ml_collections.ConfigDict()
    c.method = method
    c.dataset = dataset
    c.data_dir = ''                  # tfds data_dir or image-folder root; '' for embedded datasets
    c.train_split = 'train+unlabeled' if dataset == 'stl10' else 'train'  # STL-10 pretrains on its unlabeled images
    c.eval_train_split = 'train'     # kNN bank / linear-probe training features
    c.eval_split = 'test'
    c.image_size = ds['image_size']  # host-side size of stored images (folders are resized to it)
    c.num_classes = ds['num_classes']  # 0: taken from the dataset
    c.cache_dir = ''                 # decoded image folders are cached here ('' = no cache)
    c.device_data_max_mb = 4096      # datasets up to this size live on every device; larger ones stream from the host
    c.seed = 0
    c.batch_size = 256               # global, in source images; each yields len(views) augmented views
    c.total_steps = 0                # > 0 wins over epochs
    c.epochs = 10.0
    c.dtype = 'float32'              # compute dtype: float32 | bfloat16 (params stay float32)
    c.log_every = 50
    c.eval_every = 0                 # kNN monitor every N steps (0: only at the end)
    c.checkpoint_every = 500
    c.keep_checkpoints = 3

    c.model = ml_collections.ConfigDict()
    c.model.backbone = backbone
    c.model.cifar_stem = dataset in ('mnist', 'digits', 'cifar10', 'cifar100', 'image_folder')
    c.model.patch_size = 4           # ViT only

    c.augment = ml_collections.ConfigDict()
    c.augment.recipe = 'simclr'
    c.augment.size = ds['image_size']  # output side of the global views
    c.augment.blur_prob = -1.0         # < 0: the recipe's own value
    c.augment.crop_min_scale = -1.0     # < 0: the recipe's own value
    c.augment.n_local = 0               # multicrop: local views (0: the recipe's own value)
    c.augment.local_size = 0            # multicrop: side of the local views (0: the recipe's own value)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = 'lars'          # lars | sgd | adamw
    c.optimizer.lr = 0.3               # base learning rate, scaled by batch_size / 256 when lr_scaling = 'linear'
    c.optimizer.lr_scaling = 'linear'  # linear | none
    c.optimizer.weight_decay = 1e-6
    c.optimizer.momentum = 0.9
    c.optimizer.lars_eta = 0.001
    c.optimizer.lars_clip = False        # LARC clipping: step = lr min(trust ratio, 1)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.warmup_steps = -1      # >= 0 wins over warmup_epochs
    c.optimizer.warmup_init_lr = 0.0
    c.optimizer.final_lr = 0.0
    c.optimizer.exclude_bias_and_norm = True  # from weight decay and LARS adaptation
    c.optimizer.constant_lr_heads = ()        # heads whose learning rate stays at the base value (SimSiam's predictor)

    c.eval = ml_collections.ConfigDict()
    c.eval.knn_k = 200
    c.eval.knn_temperature = 0.1
    c.eval.online_probe_lr = 0.1
    c.eval.linear_epochs = 100
    c.eval.linear_lr = 0.1
    c.eval.linear_batch_size = 256
    c.eval.batch_size = 512
    c.eval.random_init_baseline = True
    c.eval.max_train_examples = 0      # > 0: subsample the kNN bank / probe training set (fast monitors)

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ''   # '' -> from the environment (JAX_COORDINATOR_ADDRESS, SLURM, TPU) or single host
    c.distributed.num_processes = 0
    c.distributed.process_id = -1

    c.objective = ml_collections.ConfigDict()
    return c


def solo_cifar_optimizer(c: ml_collections.ConfigDict, lr: float, weight_decay: float) -> None:
    """solo-learn's CIFAR optimizer: LARS eta 0.02, bias/norm excluded, 10 warm-up epochs from 3e-5, cosine to 0."""
    c.optimizer.name = 'lars'
    c.optimizer.lr = lr
    c.optimizer.weight_decay = weight_decay
    c.optimizer.lars_eta = 0.02
    c.optimizer.lars_clip = True
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.warmup_init_lr = 3e-5


EMBEDDED_EPOCHS = 30.0  # the embedded default's budget: about 5 minutes of training on 2 CPU cores


def method_config(method: str, arg: str | None, **extra_args):
    """Shared start of every method file: -> (config, parsed variant args).

    Variant args: dataset (mnist | cifar10 | cifar100 | stl10 | imagenet2012), backbone, epochs, batch_size, plus
    ``extra_args`` of the method. The embedded MNIST default gets settings that finish in minutes on a CPU; the
    others start from solo-learn's CIFAR setup (ResNet-18 CIFAR stem, batch 256, 40 epochs, bf16).
    """
    a = parse_arg(arg, dataset='mnist', backbone='', epochs=-1.0, batch_size=0, **extra_args)
    embedded = a.dataset == 'mnist'
    c = base_config(method, a.dataset, a.backbone or ('resnet_mini' if embedded else 'resnet18'))
    c.batch_size = 256
    if embedded:
        c.model.cifar_stem = False        # resnet_mini: stride-2 stem + max-pool, 28 -> 7 px, fast on CPUs
        c.epochs = EMBEDDED_EPOCHS
        c.augment.blur_prob = 0.0         # 28 px digits: blur erases strokes
        c.augment.crop_min_scale = 0.2
        c.optimizer.lr = 1.0
        c.optimizer.warmup_epochs = 1.0
        c.optimizer.weight_decay = 1e-5
    else:
        c.epochs = 40.0
        c.dtype = 'bfloat16'
    return c, a


def finish(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Applies the variant args that win over a method's own defaults (epochs, batch_size)."""
    if a.epochs > 0:
        c.epochs = a.epochs
    if a.batch_size > 0:
        c.batch_size = a.batch_size
    return c


def redundancy_reduction_setup(c: ml_collections.ConfigDict, embedded: bool) -> None:
    """Shared by Barlow Twins and VICReg: 3-layer projector (1024 wide on MNIST, 2048 as solo-learn's CIFAR),
    BYOL's views, LARS lr 0.3, wd 1e-4."""
    width = 1024 if embedded else 2048
    c.augment.recipe = 'byol' if embedded else 'solo_byol_cifar'
    c.objective.projector_hidden = (width, width)
    c.objective.projector_dim = width
    c.objective.projector_bn = True
    if embedded:
        c.optimizer.lr = 0.3
        c.optimizer.weight_decay = 1e-4
    else:
        solo_cifar_optimizer(c, lr=0.3, weight_decay=1e-4)
