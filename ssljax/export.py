"""Export a run's encoder: ssljax export --workdir DIR [--step N] [--network NAME] [--out PATH] [--format torch]

Writes the variables of the encoder that evaluation scores (the objective's ``eval_network``: the online encoder,
DINO's teacher; or ``--network online|target|teacher``) at the latest checkpoint (or step N) as

    PATH/encoder.safetensors   every array under its '/'-joined path: 'params/stage1_block1/conv1/kernel',
                               'batch_stats/stem_bn/mean', ...; the description below as the metadata entry 'ssljax'
    PATH/encoder.npz           the same arrays under the same names, plus '__ssljax__' (the description as a string)
    PATH/encoder.json          the description: backbone and every config.model setting, dtype, input size and
                               channels, feature_dim, the evaluation view's normalisation, method, network, step,
                               ssljax version

(PATH defaults to DIR/export) and prints one line naming them (``--json``: the description as one JSON line);
``--format torch`` also writes PATH/encoder.pt, a PyTorch state_dict (`torch_state_dict`, `torch_model`).
``load_encoder(PATH)`` rebuilds the Flax module and its variables from any of the three files or the folder; with
them

    module, variables = load_encoder('DIR/export')
    z = module.apply(variables, x, train=False)['pooled']      # x: float [B, S, S, 3], normalised as described

gives the features the run's evaluators scored (the evaluation view of uint8 images is x / 255, the centre square
crop, an antialiased bilinear resize to S = image_size, then (x - mean) / std). Nothing but the workdir is read: no
data, so a workdir copied to another machine exports too. Errors end with one line ``ssljax: error: ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
from typing import Any

import numpy as np

from ssljax.data import views as views_lib
from ssljax.models import registry

FORMAT = 'ssljax-encoder'
FORMAT_VERSION = 1
FILES = dict(safetensors='encoder.safetensors', npz='encoder.npz', json='encoder.json')
_NPZ_DESCRIPTION = '__ssljax__'
_SEP = '/'


@dataclasses.dataclass
class RestoredEncoder:
    """A run's evaluated encoder at one checkpoint: the module, its {'params', 'batch_stats'} and how to feed it."""

    config: Any  # the run's ConfigDict (DIR/config.json)
    module: Any  # flax module: apply(variables, x, train=False)['pooled'] -> [B, feature_dim]
    variables: dict  # {'params': ..., 'batch_stats': ...} (jax arrays on the first device)
    step: int
    network: str  # 'online', 'target', 'teacher'
    feature_dim: int
    image_size: int  # side of the evaluation view
    mean: tuple  # normalisation of the evaluation view (the run's first train view's)
    std: tuple


def restore_encoder(
    workdir: str, step: int | None = None, network: str = '', overrides: list[str] | tuple = ()
) -> RestoredEncoder:
    """The encoder ``network`` ('' = the method's ``eval_network``) of ``workdir``'s checkpoint at ``step`` (latest
    when None), read without building the run: DIR/config.json (``KEY=VALUE`` overrides applied) gives the module,
    the checkpoint is restored whole onto this process's first device (`checkpoint.load_tree`) and the encoder's
    variables are picked from it as the objective's ``encoder_variables`` picks them for evaluation."""
    from ssljax import checkpoint as ckpt_lib
    from ssljax import evaluate
    from ssljax.objectives import OBJECTIVES

    config = evaluate.load_run_config(workdir, list(overrides))
    step = ckpt_lib.resolve_step(workdir, step)
    if config.method not in OBJECTIVES:
        raise ValueError(
            f'unknown method {config.method!r} in {workdir}/config.json; known: {", ".join(sorted(OBJECTIVES))}'
        )
    cls = OBJECTIVES[config.method]
    network = network or cls.eval_network
    absl_logger = logging.getLogger('absl')  # orbax warns that a standalone read has no manager metadata
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        tree = ckpt_lib.load_tree(workdir, step)
    finally:
        absl_logger.setLevel(level)
    # encoder_variables reads only the method's name and eval_network; no objective (and no data) is built.
    stub = types.SimpleNamespace(name=cls.name, eval_network=cls.eval_network)
    variables = cls.encoder_variables(
        stub, tree['params'], tree.get('batch_stats') or {}, tree.get('objective_state') or {}, network
    )
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats') or {}}
    module, feature_dim = registry.encoder_from_config(config)
    views, _ = views_lib.views_from_config(config)
    return RestoredEncoder(
        config,
        module,
        variables,
        int(step),
        network,
        int(feature_dim),
        int(config.augment.size),
        tuple(float(v) for v in views[0].mean),
        tuple(float(v) for v in views[0].std),
    )


# ----------------------------------------------------------------------------------------------------- the files


def _leaves(tree, prefix: str = ''):
    """(path joined by '/', leaf) of every leaf of a nested mapping."""
    for key, value in tree.items():
        name = f'{prefix}{_SEP}{key}' if prefix else str(key)
        if hasattr(value, 'items'):
            yield from _leaves(value, name)
        else:
            yield name, value


def flatten_variables(variables: dict) -> dict[str, np.ndarray]:
    """{'params': {'stem_conv': {'kernel': a}}} -> {'params/stem_conv/kernel': numpy a} (empty groups dropped)."""
    return {name: np.ascontiguousarray(np.asarray(value)) for name, value in _leaves(variables)}


def unflatten_variables(flat: dict[str, np.ndarray]) -> dict:
    """Inverse of `flatten_variables`; 'params' and 'batch_stats' are always present (possibly empty)."""
    tree: dict = {'params': {}, 'batch_stats': {}}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(_SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def describe(restored: RestoredEncoder, flat: dict[str, np.ndarray]) -> dict:
    """The JSON description of an exported encoder (what `load_encoder` needs to rebuild the module)."""
    import ssljax

    config = restored.config
    model = {k: _jsonable(v) for k, v in config.model.items()}
    count = lambda group: int(sum(v.size for k, v in flat.items() if k.startswith(group + _SEP)))  # noqa: E731
    return {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'ssljax_version': ssljax.__version__,
        'backbone': config.model.backbone,
        'model': model,
        'dtype': config.dtype,
        'image_size': restored.image_size,
        'channels': 3,
        'feature_dim': restored.feature_dim,
        'preprocess': {
            'mean': list(restored.mean),
            'std': list(restored.std),
            'eval_view': 'x / 255, centre square crop, antialiased bilinear resize to image_size, (x - mean) / std',
        },
        'output': "module.apply(variables, x, train=False)['pooled']: float32 [B, feature_dim]",
        'method': config.method,
        'network': restored.network,
        'step': restored.step,
        'dataset': config.dataset,
        'num_params': count('params'),
        'num_batch_stats': count('batch_stats'),
        'files': dict(FILES),
    }


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if hasattr(value, 'to_dict'):
        return value.to_dict()
    return value


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def save_encoder(out: str, flat: dict[str, np.ndarray], description: dict) -> dict[str, str]:
    """Writes the arrays ``flat`` (`flatten_variables`) and ``description`` as PATH/encoder.{safetensors, npz,
    json} -> {kind: path}."""
    if not _have_safetensors():
        raise RuntimeError('writing encoder.safetensors needs the safetensors package: pip install safetensors')
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    text = json.dumps(description, sort_keys=True)
    paths = {kind: os.path.join(out, name) for kind, name in FILES.items()}
    save_file(flat, paths['safetensors'], metadata={'ssljax': text})
    np.savez(paths['npz'], **flat, **{_NPZ_DESCRIPTION: np.asarray(text)})
    with open(paths['json'], 'w') as f:
        f.write(json.dumps(description, indent=2, sort_keys=True) + '\n')
    return paths


def export_encoder(workdir: str, out: str | None = None, step: int | None = None, network: str = '') -> dict:
    """Exports ``workdir``'s evaluated encoder (see the module doc) -> its description, with 'paths' added."""
    import jax

    restored = restore_encoder(workdir, step, network)
    flat = flatten_variables(jax.device_get(restored.variables))
    description = describe(restored, flat)
    out = out or os.path.join(workdir, 'export')
    paths = save_encoder(out, flat, description)
    return {**description, 'paths': paths}


def _resolve(path: str) -> tuple[str, str]:
    """-> (weights file, kind) for a folder or one of the three files."""
    if os.path.isdir(path):
        safetensors_path = os.path.join(path, FILES['safetensors'])
        if os.path.isfile(safetensors_path) and _have_safetensors():
            return safetensors_path, 'safetensors'
        return os.path.join(path, FILES['npz']), 'npz'
    if path.endswith('.json'):
        return _resolve(os.path.dirname(os.path.abspath(path)))
    if path.endswith('.safetensors'):
        return path, 'safetensors'
    if path.endswith('.npz'):
        return path, 'npz'
    raise ValueError(f'{path!r} is not an exported encoder (a folder, .safetensors, .npz or .json)')


def _have_safetensors() -> bool:
    import importlib.util

    return importlib.util.find_spec('safetensors') is not None


def read_encoder_file(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """-> (description, flat arrays) of an exported encoder (a folder or one of its files)."""
    weights, kind = _resolve(path)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f'no exported encoder at {path!r} (looked for {weights})')
    if kind == 'safetensors':
        if not _have_safetensors():
            raise RuntimeError(
                f'reading {weights} needs the safetensors package (pip install safetensors); or load '
                'the encoder.npz beside it'
            )
        from safetensors import safe_open

        flat = {}
        with safe_open(weights, framework='np') as f:
            text = (f.metadata() or {}).get('ssljax')
            for name in f.keys():
                flat[name] = f.get_tensor(name)
    else:
        with np.load(weights, allow_pickle=False) as data:
            flat = {name: data[name] for name in data.files if name != _NPZ_DESCRIPTION}
            text = str(data[_NPZ_DESCRIPTION]) if _NPZ_DESCRIPTION in data.files else None
    if text is None:
        raise ValueError(f'{weights} has no ssljax description (was it written by ssljax.export?)')
    description = json.loads(text)
    if description.get('format') != FORMAT or description.get('format_version', 0) > FORMAT_VERSION:
        raise ValueError(f'{weights}: not an {FORMAT} file of version <= {FORMAT_VERSION}')
    return description, flat


def build_module(description: dict, dtype: str | None = None):
    """The Flax module of a description (``dtype`` 'float32' / 'bfloat16' replaces the exported compute dtype)."""
    import jax.numpy as jnp

    from ssljax.models import registry

    settings = {k: _hashable(v) for k, v in registry.model_settings(description['model']).items()}
    dtype = dtype or description.get('dtype', 'float32')
    module, _ = registry.create_encoder(
        description['backbone'],
        image_size=description['image_size'],
        dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32,
        **settings,
    )
    return module


def load_encoder(path: str, dtype: str | None = None):
    """Loads an exported encoder -> ``(module, variables)``.

    ``path``: the export folder (encoder.safetensors is read when the safetensors package is installed, else
    encoder.npz) or one of its files (.safetensors, .npz or .json). The module is rebuilt from the description
    (backbone, every config.model setting, image size, compute dtype, or ``dtype`` when given) and the arrays are
    checked against the module's own variable shapes. ``module.apply(variables, x, train=False)['pooled']`` then
    gives the run's features, for x normalised as ``description['preprocess']`` says (`read_encoder_file` returns
    the description).
    """
    import jax
    import jax.numpy as jnp

    description, flat = read_encoder_file(path)
    module = build_module(description, dtype)
    variables = jax.tree.map(jnp.asarray, unflatten_variables(flat))
    side = description['image_size']
    expected = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False))
    want = {k: (tuple(v.shape), str(v.dtype)) for k, v in _leaves(expected)}
    have = {k: (tuple(v.shape), str(v.dtype)) for k, v in flat.items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ValueError(
            f'{path}: the arrays do not match the {description["backbone"]} module built from its '
            f'description (first differences: {diff})'
        )
    return module, variables


# ---------------------------------------------------------------------------------------------------- PyTorch

TORCH_FILE = 'encoder.pt'
TORCH_RESNETS = ('resnet18', 'resnet34', 'resnet50')
TORCH_VITS = ('vit_tiny', 'vit_small', 'vit_base')


def _conv(kernel: np.ndarray) -> np.ndarray:
    """Flax conv kernel [kh, kw, in, out] -> PyTorch weight [out, in, kh, kw]."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def _bn(flat: dict, out: dict, flax_name: str, torch_name: str) -> None:
    out[f'{torch_name}.weight'] = flat[f'params/{flax_name}/scale']
    out[f'{torch_name}.bias'] = flat[f'params/{flax_name}/bias']
    out[f'{torch_name}.running_mean'] = flat[f'batch_stats/{flax_name}/mean']
    out[f'{torch_name}.running_var'] = flat[f'batch_stats/{flax_name}/var']
    out[f'{torch_name}.num_batches_tracked'] = np.zeros((), np.int64)


def _resnet_state_dict(flat: dict) -> dict[str, np.ndarray]:
    """ssljax ResNet -> torchvision / timm names: stem_conv -> conv1, stage{s}_block{b} -> layer{s}.{b-1},
    downsample_conv / _bn -> downsample.0 / .1 (the layout both libraries share; no ``fc``)."""
    out: dict[str, np.ndarray] = {'conv1.weight': _conv(flat['params/stem_conv/kernel'])}
    _bn(flat, out, 'stem_bn', 'bn1')
    blocks = sorted({k.split('/')[1] for k in flat if k.startswith('params/stage')})
    for block in blocks:
        stage, index = block[len('stage') :].split('_block')
        prefix = f'layer{int(stage)}.{int(index) - 1}'
        for layer in ('conv1', 'conv2', 'conv3'):
            if f'params/{block}/{layer}/kernel' in flat:
                out[f'{prefix}.{layer}.weight'] = _conv(flat[f'params/{block}/{layer}/kernel'])
                _bn(flat, out, f'{block}/bn{layer[-1]}', f'{prefix}.bn{layer[-1]}')
        if f'params/{block}/downsample_conv/kernel' in flat:
            out[f'{prefix}.downsample.0.weight'] = _conv(flat[f'params/{block}/downsample_conv/kernel'])
            _bn(flat, out, f'{block}/downsample_bn', f'{prefix}.downsample.1')
    return out


def _dense(flat: dict, out: dict, flax_name: str, torch_name: str) -> None:
    out[f'{torch_name}.weight'] = np.ascontiguousarray(flat[f'params/{flax_name}/kernel'].T)
    out[f'{torch_name}.bias'] = flat[f'params/{flax_name}/bias']


def _ln(flat: dict, out: dict, flax_name: str, torch_name: str) -> None:
    out[f'{torch_name}.weight'] = flat[f'params/{flax_name}/scale']
    out[f'{torch_name}.bias'] = flat[f'params/{flax_name}/bias']


def _vit_state_dict(flat: dict, module) -> dict[str, np.ndarray]:
    """ssljax ViT -> timm's VisionTransformer names (patch_embed.proj, cls_token, pos_embed, blocks.i.*, norm).

    The patch embedding is a Dense over (row, col, channel)-flattened patches: reshaped to the conv weight
    [dim, channels, p, p]. Fixed sin-cos positions become timm's ``pos_embed`` parameter with a zero row for [CLS]
    (ssljax adds no position to [CLS]); the qkv columns are ordered (3, heads, head_dim) in both.
    """
    from ssljax.models import vit

    p, dim = module.patch_size, module.dim
    kernel = flat['params/patch_embed/kernel']  # [p * p * C, dim]
    out: dict[str, np.ndarray] = {
        'cls_token': flat['params/cls_token'],
        'patch_embed.proj.weight': np.ascontiguousarray(kernel.reshape(p, p, -1, dim).transpose(3, 2, 0, 1)),
        'patch_embed.proj.bias': flat['params/patch_embed/bias'],
    }
    if module.pos_embed == 'learned':
        out['pos_embed'] = flat['params/pos_embed']
    else:
        grid = module.image_size // p
        table = np.asarray(vit.sincos_pos_embed_2d(dim, grid, grid), np.float32)
        out['pos_embed'] = np.concatenate([np.zeros((1, dim), np.float32), table])[None]
    for i in range(module.depth):
        block, prefix = f'block{i + 1}', f'blocks.{i}'
        _ln(flat, out, f'{block}/norm1', f'{prefix}.norm1')
        _dense(flat, out, f'{block}/attn/qkv', f'{prefix}.attn.qkv')
        _dense(flat, out, f'{block}/attn/proj', f'{prefix}.attn.proj')
        _ln(flat, out, f'{block}/norm2', f'{prefix}.norm2')
        _dense(flat, out, f'{block}/fc1', f'{prefix}.mlp.fc1')
        _dense(flat, out, f'{block}/fc2', f'{prefix}.mlp.fc2')
    _ln(flat, out, 'norm', 'norm')
    return out


def torch_state_dict(flat: dict[str, np.ndarray], description: dict) -> dict[str, np.ndarray]:
    """The exported encoder's arrays under PyTorch names (numpy; `export_torch` saves them as tensors): the layout of
    torchvision's / timm's ResNets (without ``fc``) and of timm's VisionTransformer (see docs/export.md)."""
    backbone = description['backbone']
    if backbone in TORCH_RESNETS:
        return _resnet_state_dict(flat)
    if backbone in TORCH_VITS:
        return _vit_state_dict(flat, build_module(description))
    raise ValueError(
        f'--format torch: backbone {backbone!r} has no PyTorch counterpart; exportable: '
        f'{", ".join(TORCH_RESNETS + TORCH_VITS)}'
    )


def torch_model(description: dict):
    """The timm model whose ``load_state_dict(torch.load('encoder.pt'), strict=True)`` takes the export: a ResNet
    with its stem replaced by the CIFAR stem when ``model.cifar_stem`` (3x3 stride-1 conv, no max-pool), or a
    VisionTransformer with the run's image size, patch size, width, depth, heads and pooling. Needs torch and timm
    (``pip install -e .[export]``); ``num_classes=0``: the output is the pooled feature."""
    import timm
    import torch

    backbone = description['backbone']
    if backbone in TORCH_RESNETS:
        model = timm.create_model(backbone, pretrained=False, num_classes=0)
        if description['model'].get('cifar_stem', False):
            model.conv1 = torch.nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = torch.nn.Identity()
        return model.eval()
    if backbone in TORCH_VITS:
        from timm.models.vision_transformer import VisionTransformer

        module = build_module(description)
        return VisionTransformer(
            img_size=module.image_size,
            patch_size=module.patch_size,
            embed_dim=module.dim,
            depth=module.depth,
            num_heads=module.num_heads,
            mlp_ratio=module.mlp_ratio,
            num_classes=0,
            global_pool='token' if module.pool == 'cls' else 'avg',
            fc_norm=False,  # the final LayerNorm before pooling, as ssljax
        ).eval()
    raise ValueError(f'backbone {backbone!r} has no PyTorch counterpart')


def export_torch(path: str, out: str | None = None) -> str:
    """Writes the exported encoder at ``path`` (a folder or file of `save_encoder`) as a PyTorch state_dict ->
    the path of ``encoder.pt`` (default: beside the other files)."""
    try:
        import torch
    except ImportError:
        raise RuntimeError('--format torch needs PyTorch: pip install -e ".[export]" (torch, timm)') from None
    description, flat = read_encoder_file(path)
    state = {k: torch.from_numpy(np.array(v)) for k, v in torch_state_dict(flat, description).items()}
    folder = out or (path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, TORCH_FILE)
    torch.save(state, target)
    return target


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv: list[str]):
    from ssljax import cli

    parser = argparse.ArgumentParser(prog=cli.prog('python -m ssljax.export'), description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='the run directory (config.json, checkpoints/)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
    parser.add_argument(
        '--network',
        default='',
        choices=('', 'online', 'target', 'teacher'),
        help="the encoder to export (default: the one evaluation scores)",
    )
    parser.add_argument('--out', default=None, help='output folder (default: WORKDIR/export)')
    parser.add_argument(
        '--format',
        default='flax',
        choices=('flax', 'torch'),
        help='flax: encoder.safetensors / .npz + encoder.json (load_encoder); torch: also encoder.pt, a PyTorch '
        "state_dict for timm's / torchvision's ResNets and timm's ViT (docs/export.md)",
    )
    parser.add_argument('--json', action='store_true', help='print the whole description as one JSON line')
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)

    def export_from_args():
        from ssljax import logging_lib

        if args.format == 'torch':
            import importlib.util

            if importlib.util.find_spec('torch') is None:  # before anything is written
                raise RuntimeError('--format torch needs PyTorch: pip install -e ".[export]" (torch, timm)')
            from ssljax import config_lib, evaluate

            backbone = evaluate.load_run_config(args.workdir, []).model.backbone
            if backbone not in TORCH_RESNETS + TORCH_VITS:
                raise config_lib.ConfigError(
                    f'--format torch: backbone {backbone!r} has no PyTorch counterpart; exportable: '
                    f'{", ".join(TORCH_RESNETS + TORCH_VITS)}'
                )
        description = export_encoder(args.workdir, args.out, args.step, args.network)
        folder = os.path.dirname(description['paths']['json'])
        if args.format == 'torch':
            description['paths']['torch'] = export_torch(folder)
        if args.json:
            print(logging_lib.dumps(description, sort_keys=True))
            return
        files = ', '.join(os.path.basename(p) for p in description['paths'].values())
        print(
            f"exported {description['backbone']} ({description['network']} network, step {description['step']}, "
            f"{description['num_params']:,} parameters, features {description['feature_dim']}) to {folder}: {files}"
        )

    from ssljax.cli import run_reporting_errors

    return run_reporting_errors(export_from_args)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
