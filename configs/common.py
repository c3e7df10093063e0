"""Defaults shared by every method's config, and the parser for variant arguments.

Every key a run reads is defined here or in the method's file, so ``--config.KEY=VALUE`` overrides are checked
against a complete tree (an unknown key or a value of the wrong type is an error before anything compiles).

The objective block has one source of truth: ``config.objective`` starts as every config key of the method's
objective class at its published default (:func:`objective_defaults`, from the class's dataclass fields), and a method
file changes a key only through :func:`recipe`, which names the recipe the value comes from and records the override
(:func:`recipe_overrides`; tests/test_config_defaults.py fails on an objective value that differs from the class's
default without such a declaration, and on a declaration that equals the default).
"""

from __future__ import annotations

import weakref
from typing import Any

import ml_collections

from ssljax import config_lib
from ssljax.config_lib import ConfigError
from ssljax.data.sources import DATASET_SHAPES as DATASET_DEFAULTS  # 0: from the data (image folders)


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


VIEW_FIELDS = (
    'size',
    'crop_scale',
    'crop_ratio',
    'flip_prob',
    'jitter_prob',
    'brightness',
    'contrast',
    'saturation',
    'hue',
    'grayscale_prob',
    'blur_prob',
    'blur_sigma',
    'blur_kernel',
    'solarize_prob',
    'solarize_threshold',
    'mean',
    'std',
)


def set_views(c: ml_collections.ConfigDict, recipe: str, names: tuple[str, ...] = (), **overrides) -> None:
    """Writes the views of the preset ``recipe`` (ssljax.data.augment.RECIPES) into ``c.augment.views`` as data.

    Consecutive identical views become one entry with ``count``; entries are named ``view`` (one kind),
    ``view1, view2`` (asymmetric pairs) or ``global1, global2, local`` (multi-crop), unless ``names`` are given.
    Every entry also has ``mask_ratio`` (0: no mask) and ``mask_patch_size`` (side of a masked patch in pixels, 0:
    the model's patch size), the per-sample random patch mask that masked-image methods read from ``batch['masks']``.
    ``size`` 0 means ``augment.size``; the global views are stored that way so that ``--config.augment.size`` moves
    them. ``overrides`` are the preset's own arguments (``n_local=4``).
    """
    from ssljax.data import augment

    size = c.augment.size
    views = augment.recipe(recipe, size, **overrides)
    groups: list[list] = []
    for v in views:
        if groups and groups[-1][0] == v:
            groups[-1][1] += 1
        else:
            groups.append([v, 1])
    if not names:
        if len(groups) == 1:
            names = ('view',)
        elif recipe == 'multicrop':
            names = ('global1', 'global2', 'local')[: len(groups)]
        else:
            names = tuple(f'view{i + 1}' for i in range(len(groups)))
    if len(names) != len(groups):
        raise ValueError(f'set_views({recipe!r}): {len(groups)} kinds of view but names {names}')
    entries = ml_collections.ConfigDict()
    for name, (view, count) in zip(names, groups):
        fields = {f: getattr(view, f) for f in VIEW_FIELDS}
        fields['size'] = 0 if view.size == size else view.size
        entries[name] = dict(count=count, **fields, mask_ratio=0.0, mask_patch_size=0)
    with c.augment.unlocked():
        c.augment.views = entries
        c.augment.order = tuple(names)


def base_config(
    method: str, dataset: str = 'mnist', backbone: str = 'resnet_tiny', image_size: int = 0
) -> ml_collections.ConfigDict:
    """The keys every run has. Method files fill in ``objective``, ``augment`` and optimizer settings.

    ``image_size`` > 0 replaces the dataset's (an image folder's size is found in its images by
    ``configure.load_config_with_overrides``, which rebuilds the config with it).
    """
    if dataset not in DATASET_DEFAULTS:
        raise ConfigError(
            f'unknown dataset {dataset!r} (config argument "dataset"); known: {", ".join(sorted(DATASET_DEFAULTS))}'
        )
    ds = dict(DATASET_DEFAULTS[dataset])
    if image_size > 0:
        ds['image_size'] = image_size
    c = ml_collections.ConfigDict()
    c.method = method
    c.dataset = dataset
    c.data_dir = ''  # tfds data_dir or image-folder root; '' for embedded datasets
    c.train_split = 'train+unlabeled' if dataset == 'stl10' else 'train'  # STL-10 pretrains on its unlabeled images
    c.eval_train_split = 'train'  # kNN bank / linear-probe training features
    c.eval_split = 'test'
    c.image_size = ds['image_size']  # host-side size of stored images (folders are resized to it); 0: from the data
    c.num_classes = ds['num_classes']  # 0: taken from the dataset
    c.cache_dir = ''  # decoded image folders are cached here ('' = no cache)
    c.bad_images = 'error'  # image folders: 'error' lists every unreadable file and stops; 'skip' trains without them
    c.device_data_max_mb = 1024  # decoded datasets up to this size live on every device (a per-device budget)
    c.host_data_max_mb = 8192  # larger ones up to this stay in host memory (gathered by a thread); beyond: stream
    c.stream = 'auto'  # auto (by size; imagenet2012 always) | always | never: grain workers decode, crop
    c.data_workers = -1  # streaming: grain worker processes (-1: one per core, at most 16; 0: threads)
    c.seed = 0
    c.batch_size = 256  # global, in source images; each yields len(views) augmented views
    c.total_steps = 0  # > 0 wins over epochs
    c.epochs = 10.0
    c.dtype = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
    c.log_every = 50
    c.eval_every = 0  # default period of the evaluators whose own ``every`` is -1 (0: only at the end)
    c.checkpoint_every = 500
    c.keep_checkpoints = 3

    c.model = ml_collections.ConfigDict()
    c.model.backbone = backbone
    c.model.cifar_stem = dataset in ('mnist', 'digits', 'cifar10', 'cifar100', 'image_folder')
    # padding of the CIFAR stem's 3x3 conv: 1 keeps 32 x 32 maps (SimCLR's CIFAR ResNet, 'SAME'); 2 makes them
    # 34 x 34 (solo-learn's nn.Conv2d(3, 64, 3, 1, padding=2), set by method_config for the solo-learn recipes)
    c.model.cifar_stem_padding = 1
    c.model.patch_size = 4  # ViT only
    # ViT shape (0: the backbone preset's): width, blocks, heads, MLP ratio, MLP width (> 0 wins over the ratio)
    c.model.dim = 0
    c.model.depth = 0
    c.model.num_heads = 0
    c.model.mlp_ratio = 0.0
    c.model.mlp_dim = 0
    c.model.remat = 'none'  # none | block: recompute each block's activations in the backward pass (ViT, ResNet)
    c.model.remat_policy = 'nothing_saveable'  # what remat keeps: a jax.checkpoint_policies name (dots_saveable, ...)
    c.model.scan = False  # ViT: one nn.scan over the blocks (compiles once; stacked params, see docs/scaling.md)

    c.augment = ml_collections.ConfigDict()
    c.augment.size = ds[
        'image_size'
    ]  # side of the evaluation view, and of every view whose own size is 0; 0: image_size
    c.augment.blur_prob = -1.0  # >= 0: replaces every view's blur_prob (a quick switch, e.g. 0 for 8 px images)
    c.augment.crop_min_scale = -1.0  # >= 0: replaces the lower end of every view's crop_scale
    # The view recipe as data: augment.views.<name> (ViewConfig fields, count, mask_*), in the order augment.order.
    # Method files fill it from a named preset with set_views(c, 'byol'); edit any field per view from the command
    # line, e.g. --config.augment.views.local.count=8 or --config.augment.views.view1.solarize_prob=0.
    c.augment.views = ml_collections.ConfigDict()
    c.augment.order = ()
    set_views(c, 'simclr')

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = 'lars'  # lars | sgd | adamw
    c.optimizer.lr = 0.3  # base learning rate, scaled by batch_size / 256 when lr_scaling = 'linear'
    c.optimizer.lr_scaling = 'linear'  # linear | none
    c.optimizer.weight_decay = 1e-6
    c.optimizer.momentum = 0.9
    c.optimizer.lars_eta = 0.001
    c.optimizer.lars_clip = False  # LARC clipping: step = min(trust ratio, lr) (solo-learn's clip_lr)
    c.optimizer.lars_variant = 'solo_learn'  # solo_learn (lr times the momentum buffer) | tf (SimCLR's, lr inside)
    c.optimizer.clip_grad = 0.0  # gradient clipping threshold (0 = off)
    c.optimizer.clip_grad_mode = 'per_tensor'  # per_tensor (DINO's clip_gradients) | global (global norm)
    c.optimizer.weight_decay_end = -1.0  # >= 0: weight decay follows a per-step cosine to this value (DINO)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8  # AdamW's epsilon in m_hat / (sqrt(v_hat) + eps): optax's and torch's default
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.warmup_steps = -1  # >= 0 wins over warmup_epochs
    c.optimizer.warmup_init_lr = 0.0
    # optax: lr_t = init + (peak - init) t / W, the peak at step W (optax.warmup_cosine_decay_schedule, SimCLR's TF
    # code); solo_learn: / (W - 1), the peak at step W - 1 (solo-learn's LinearWarmupCosineAnnealingLR). Same cosine.
    c.optimizer.warmup_schedule = 'optax'
    c.optimizer.final_lr = 0.0
    c.optimizer.exclude_bias_and_norm = True  # from weight decay and LARS adaptation
    c.optimizer.constant_lr_heads = ()  # heads whose learning rate stays at the base value (SimSiam's predictor)

    c.eval = ml_collections.ConfigDict()  # shared by every evaluator
    c.eval.batch_size = 512  # images per encoder call
    c.eval.max_train_examples = 0  # > 0: subsample the kNN bank / probe training set (fast monitors)
    c.eval.random_init_baseline = True  # score the encoder at initialisation too (random_init.json)
    c.eval.baseline_evals = ('knn', 'linear')  # which evaluators the random-init baseline runs
    c.eval.online_probe_lr = 0.1  # the online probe trains inside the step (SGD, cosine, x batch / 256)

    # Evaluators chosen by name (big_vision style): evals.<name>.type picks the class (the registry of
    # ssljax/evaluation/framework.py), ``every`` its period in steps during training (0: only at the end, -1:
    # eval_every), ``network``
    # the encoder it scores ('' = the method's default: online, or DINO's teacher; 'online', 'target', 'teacher').
    # Every evaluator also runs once at the end; its values land in summary.json as <name>_<value> or <value>.
    c.evals = ml_collections.ConfigDict()
    c.evals.knn = dict(type='knn', every=-1, network='', k=200, temperature=0.1)
    c.evals.online_probe = dict(type='online_probe', every=-1, network='online')  # the probe trains on the online net
    c.evals.linear = dict(type='linear', every=0, network='', epochs=100, lr=0.1, batch_size=256)
    c.evals.clustering = dict(type='clustering', every=0, network='', num_clusters=0)
    c.evals.diagnostics = dict(type='diagnostics', every=0, network='', max_examples=2048)

    # Batch composition: which dataset indices form the global batch of each step (ssljax/data/samplers.py).
    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = 'epoch_shuffle'  # a fresh seeded permutation per epoch, as every reference does

    # Scale (docs/scaling-mesh.md): mesh, mesh_dcn, sharding_strategy, sharding_min_size_mb, grad_accum_steps,
    # grad_accum_mode; their defaults and what they mean are ssljax/config_lib.py's SCALE_DEFAULTS.
    for key, value in config_lib.SCALE_DEFAULTS.items():
        c[key] = value

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = (
        ''  # '' -> from the environment (JAX_COORDINATOR_ADDRESS, SLURM, TPU) or single host
    )
    c.distributed.num_processes = 0
    c.distributed.process_id = -1

    c.objective = objective_defaults(method)
    return c


# ----- the objective block: the class's published defaults, and each config's declared recipe overrides -------------


def objective_defaults(method: str) -> ml_collections.ConfigDict:
    """``config.objective`` of ``method``: every key its objective class reads, at the class's (published) default."""
    from ssljax.objectives import OBJECTIVES

    if method not in OBJECTIVES:
        raise ValueError(f'unknown method {method!r}; known: {", ".join(sorted(OBJECTIVES))}')
    return ml_collections.ConfigDict(OBJECTIVES[method].config_defaults())


# id(config) -> (weak reference to the config, {key: (value, recipe)}); an entry goes when its config does.
_RECIPES: dict[int, tuple[weakref.ref, dict[str, tuple[Any, str]]]] = {}


def recipe(c: ml_collections.ConfigDict, reason: str, **values) -> None:
    """Sets ``c.objective.KEY = VALUE`` where this config's recipe differs from the method's published default, and
    records each as a recipe override named by ``reason`` (the recipe, e.g. "solo-learn's CIFAR BYOL").

    Only keys the method's objective declares can be set (every key stays overridable as
    ``--config.objective.KEY=...``); the record lives here, not in the config, so config.json gains no key.
    """
    key_of = id(c)
    entry = _RECIPES.get(key_of)
    if entry is None or entry[0]() is not c:
        entry = (weakref.ref(c), {})
        _RECIPES[key_of] = entry
        weakref.finalize(c, _RECIPES.pop, key_of, None)
    for key, value in values.items():
        if key not in c.objective:
            raise KeyError(f'recipe({reason!r}): method {c.method!r} has no config key objective.{key}')
        c.objective[key] = value
        entry[1][key] = (c.objective[key], reason)


def recipe_overrides(c: ml_collections.ConfigDict) -> dict[str, tuple[Any, str]]:
    """{objective key: (value, recipe)} of every :func:`recipe` override of the config ``c``."""
    entry = _RECIPES.get(id(c))
    return dict(entry[1]) if entry is not None and entry[0]() is c else {}


def solo_cifar_optimizer(c: ml_collections.ConfigDict, lr: float, weight_decay: float) -> None:
    """solo-learn's CIFAR optimizer: LARS eta 0.02, clip_lr, bias/norm excluded (exclude_bias_n_norm), 10 warm-up
    epochs from 3e-5 with solo-learn's warm-up (the peak at step W - 1), cosine to 0."""
    c.optimizer.name = 'lars'
    c.optimizer.lr = lr
    c.optimizer.weight_decay = weight_decay
    c.optimizer.lars_eta = 0.02
    c.optimizer.lars_clip = True
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.warmup_init_lr = 3e-5
    c.optimizer.warmup_schedule = 'solo_learn'


EMBEDDED_EPOCHS = 30.0  # the embedded default's budget: about 3 minutes on 2 quiet CPU cores (BENCHMARKS.md)


def method_config(method: str, arg: str | None, objective_args: tuple[str, ...] = (), **extra_args):
    """Shared start of every method file: -> (config, parsed variant args).

    Variant args: dataset (mnist | cifar10 | cifar100 | stl10 | imagenet2012), backbone, epochs, batch_size,
    image_size (0: the dataset's; every view size follows it), plus ``extra_args`` of the method. The embedded MNIST
    default gets settings that finish in minutes on a CPU; the others start from solo-learn's CIFAR setup (ResNet-18
    CIFAR stem padded by 2 as solo/methods/base.py, batch 256, 40 epochs, bf16).
    ``objective_args`` are objective keys that are also variant args (``:predictor=linear``): their default is the
    class's, and a value that differs is a recipe override named after the argument.
    """
    defaults = objective_defaults(method)
    a = parse_arg(
        arg,
        dataset='mnist',
        backbone='',
        epochs=-1.0,
        batch_size=0,
        image_size=0,
        **{key: defaults[key] for key in objective_args},
        **extra_args,
    )
    embedded = a.dataset == 'mnist'
    c = base_config(method, a.dataset, a.backbone or ('resnet_mini' if embedded else 'resnet18'), a.image_size)
    for key in objective_args:
        if a[key] != defaults[key]:
            recipe(c, f'the variant argument {key}={a[key]}', **{key: a[key]})
    c.batch_size = 256
    if embedded:
        c.model.cifar_stem = False  # resnet_mini: stride-2 stem + max-pool, 28 -> 7 px, fast on CPUs
        c.epochs = EMBEDDED_EPOCHS
        c.augment.blur_prob = 0.0  # 28 px digits: blur erases strokes
        c.augment.crop_min_scale = 0.2
        c.optimizer.lr = 1.0
        c.optimizer.warmup_epochs = 1.0
        c.optimizer.weight_decay = 1e-5
    else:
        c.epochs = 40.0
        c.dtype = 'bfloat16'
        c.model.cifar_stem_padding = 2  # solo-learn's CIFAR stem (34 x 34); isogclr, gsimclr, CC set 1 back
    return c, a


def finish(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Applies the variant args that win over a method's own defaults (epochs, batch_size)."""
    if a.epochs > 0:
        c.epochs = a.epochs
    if a.batch_size > 0:
        c.batch_size = a.batch_size
    return c


def redundancy_reduction_setup(c: ml_collections.ConfigDict, embedded: bool) -> None:
    """Shared by Barlow Twins and VICReg (both publish a 3 x 8192 projector): 3 layers 1024 wide on MNIST, 2048 as
    solo-learn's CIFAR recipe, BYOL's views, LARS lr 0.3, wd 1e-4."""
    set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    if embedded:
        recipe(c, 'the embedded MNIST budget: a 3 x 1024 projector', projector_hidden=(1024, 1024), projector_dim=1024)
        c.optimizer.lr = 0.3
        c.optimizer.weight_decay = 1e-4
    else:
        recipe(
            c,
            "solo-learn's CIFAR recipe (scripts/pretrain/cifar): a 3 x 2048 projector",
            projector_hidden=(2048, 2048),
            projector_dim=2048,
        )
        solo_cifar_optimizer(c, lr=0.3, weight_decay=1e-4)
