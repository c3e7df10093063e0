"""Makes an ImageNet-like JPEG folder for the data-pipeline benchmark (written outside the repo, never committed).

    python experiments/data/make_imagenet_like.py --out /tmp/imagenet_like [--train 3000 --test 500 --classes 10]

Real photographs, not noise (JPEG decoding cost depends on content): the two photographs scikit-learn ships
(``sklearn.datasets.load_sample_images``: china.jpg and flower.jpg, 640x427), each output a random crop (20% to 100%
of the photograph's area, aspect 3/4 to 4/3) of a random one of them, flipped left-right with probability 1/2,
rescaled to 500x375 (landscape, 3 of 4) or 375x500 (portrait) with PIL bicubic, and saved as a baseline JPEG at
quality 90 (4:2:0 chroma subsampling, PIL's default): the dimensions and encoding of a typical ImageNet training
image, 51 KB per file on average (ImageNet's own average about 110 KB: these photographs are smoother, so they decode
somewhat faster). 3,500 files take about 13 s and 175 MB. Laid out ``OUT/<split>/<class>/<name>.JPEG`` with the
class chosen round-robin, so
``--config.dataset=image_folder --config.data_dir=OUT`` reads it. Deterministic in ``--seed``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image


def make_image(photos: list[Image.Image], rng: np.random.Generator) -> Image.Image:
    photo = photos[rng.integers(len(photos))]
    w, h = photo.size
    for _ in range(10):
        area = w * h * rng.uniform(0.2, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = w, h
    left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    img = photo.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    return img.resize(size, Image.BICUBIC)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='output root (outside the repository, e.g. /tmp/imagenet_like)')
    parser.add_argument('--train', type=int, default=3000)
    parser.add_argument('--test', type=int, default=500)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--quality', type=int, default=90)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(args.seed)
    total = 0
    for split, count in (('train', args.train), ('test', args.test)):
        for i in range(count):
            folder = os.path.join(args.out, split, f'n{i % args.classes:08d}')
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f'{split}_{i:06d}.JPEG')
            make_image(photos, rng).save(path, quality=args.quality)
            total += os.path.getsize(path)
    n = args.train + args.test
    print(f'wrote {n} JPEGs under {args.out} ({total / n / 1e3:.0f} KB each on average)')


if __name__ == '__main__':
    main()
