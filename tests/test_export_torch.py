"""`ssljax export --format torch`: the state_dict loads with strict=True into timm's ResNets (the torchvision layout)
and VisionTransformer, and the torch model's features equal the Flax module's to 1e-4 on the same images.

Runs when torch and timm are installed (`pip install -e .[export]`). timm 1.0 imports torchvision at import time
(FrozenBatchNorm2d, datasets, transforms) although its ResNet and ViT models use none of it; where torchvision is
missing (or does not import beside this torch), a placeholder module stands in for it, so that timm's own model code
is what runs."""

import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip('torch')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Placeholder(type):
    """A class whose every attribute is another placeholder class (stands in for torchvision's names)."""

    def __getattr__(cls, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def _placeholder_attribute(name):
    if name.startswith('__'):
        raise AttributeError(name)
    return _Placeholder(name, (torch.nn.Module,) if name[0].isupper() else (), {})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == 'torchvision' or fullname.startswith('torchvision.'):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _placeholder_attribute
        module.__version__ = '0.0.0'
        return module

    def exec_module(self, module):
        pass


def _import_timm():
    try:
        import timm
        return timm
    except Exception:  # ImportError, or a torchvision built for another torch failing as it loads
        pass
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith(('torchvision.', 'timm'))]:
        del sys.modules[name]
    sys.meta_path.insert(0, _PlaceholderFinder())
    try:
        import timm
    except Exception as e:
        pytest.skip(f'timm is not installed or does not import ({type(e).__name__}: {e})')
    return timm


timm = _import_timm()

from ssljax import export  # noqa: E402
from ssljax.models import registry  # noqa: E402

CASES = [  # backbone, model settings, image side (the larger two run in the slow step: ~30 s each on 2 busy cores)
    pytest.param('resnet18', dict(cifar_stem=True), 32, id='resnet18-cifar-stem'),
    pytest.param('resnet18', dict(cifar_stem=False), 64, id='resnet18-imagenet-stem'),
    pytest.param('resnet50', dict(cifar_stem=False), 64, id='resnet50', marks=pytest.mark.slow),
    pytest.param('vit_small', dict(patch_size=4), 32, id='vit_small-patch4', marks=pytest.mark.slow),
    pytest.param('vit_tiny', dict(patch_size=8, pool='mean', pos_embed='learned'), 32, id='vit_tiny-mean-learned',
                 marks=pytest.mark.slow),
]


def _random_variables(module, side, seed):
    """Initialised variables with every BatchNorm scale, bias and running statistic random (the residual blocks'
    last scale starts at 0, which would hide a mapping error)."""
    import jax
    import jax.numpy as jnp
    variables = jax.jit(lambda: module.init(jax.random.key(seed), jnp.zeros((1, side, side, 3)), train=False))()
    rng = np.random.default_rng(seed)
    flat = export.flatten_variables(jax.device_get(variables))
    for name, value in flat.items():
        if name.endswith(('/scale', '/var')):
            flat[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif name.endswith(('/mean', '/bias')) or name.endswith('cls_token'):
            flat[name] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
    return flat


@pytest.mark.parametrize('backbone, settings, side', CASES)
def test_torch_state_dict_loads_strictly_and_gives_the_same_features(backbone, settings, side):
    import jax
    import jax.numpy as jnp
    module, feature_dim = registry.create_encoder(backbone, image_size=side, **settings)
    flat = _random_variables(module, side, seed=0)
    description = {'backbone': backbone, 'model': {'backbone': backbone, **settings}, 'image_size': side,
                   'dtype': 'float32'}
    state = {k: torch.from_numpy(np.array(v)) for k, v in export.torch_state_dict(flat, description).items()}
    model = export.torch_model(description)
    model.load_state_dict(state, strict=True)  # every key, every shape, nothing left over
    x = np.random.default_rng(1).standard_normal((2, side, side, 3)).astype(np.float32)
    variables = export.unflatten_variables({k: jnp.asarray(v) for k, v in flat.items()})
    want = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False)['pooled'])(variables, x))
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert got.shape == want.shape == (2, feature_dim)
    assert np.abs(want).max() > 0.05  # not a degenerate feature
    # float32 after up to 50 layers: rounding scales with the features' magnitude (ResNet-50's reach ~100; one of
    # 4,096 was 2.0e-4 apart at 0.587), so the absolute tolerance follows it; a wrong mapping is off by O(values)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=max(1e-4, 1e-5 * float(np.abs(want).max())))


def test_resnet_keys_are_torchvisions():
    """The ResNet-18 keys are torchvision's resnet18 state_dict without ``fc``, written out here from its layout (21
    convolutions, 21 BatchNorms with 5 entries each), so torchvision.models.resnet18 loads them as timm's does."""
    module, _ = registry.create_encoder('resnet18', image_size=32, cifar_stem=False)
    keys = set(export.torch_state_dict(_random_variables(module, 32, 0), {'backbone': 'resnet18', 'model': {}}))
    convs = ['conv1'] + [f'layer{s}.{b}.conv{c}' for s in range(1, 5) for b in range(2) for c in (1, 2)] + \
        [f'layer{s}.0.downsample.0' for s in (2, 3, 4)]
    bns = ['bn1'] + [f'layer{s}.{b}.bn{c}' for s in range(1, 5) for b in range(2) for c in (1, 2)] + \
        [f'layer{s}.0.downsample.1' for s in (2, 3, 4)]
    want = {f'{c}.weight' for c in convs} | {f'{b}.{p}' for b in bns for p in ('weight', 'bias', 'running_mean',
                                                                             'running_var', 'num_batches_tracked')}
    assert keys == want


def test_a_backbone_without_a_torch_counterpart_is_refused():
    with pytest.raises(ValueError, match="backbone 'resnet_tiny' has no PyTorch counterpart"):
        export.torch_state_dict({}, {'backbone': 'resnet_tiny', 'model': {}})


@pytest.mark.slow  # end-to-end: a 1-step ResNet-18 run, then the command line
def test_export_format_torch_from_the_command_line(tmp_path):
    workdir = tmp_path / 'run'
    tiny = ['--config.dataset=digits', '--config.image_size=8', '--config.augment.size=8', '--config.batch_size=16',
            '--config.augment.blur_prob=0.0', '--config.model.backbone=resnet18', '--smoke']
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, '-m', 'ssljax', 'train', '--config', 'simclr', '--workdir', str(workdir),
                        *tiny], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, '-m', 'ssljax', 'export', '--workdir', str(workdir), '--format', 'torch'],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith('encoder.json, encoder.pt') and len(r.stdout.strip().splitlines()) == 1
    module, variables = export.load_encoder(str(workdir / 'export'))
    description, _ = export.read_encoder_file(str(workdir / 'export'))
    model = export.torch_model(description)
    model.load_state_dict(torch.load(workdir / 'export' / 'encoder.pt'), strict=True)
    x = np.random.default_rng(2).standard_normal((4, 8, 8, 3)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, np.asarray(module.apply(variables, x, train=False)['pooled']), rtol=1e-4,
                               atol=1e-4)
