"""Host-side decoding: reduced-size JPEG decoding, and the random-resized crops of streamed views.

Two jobs, both on the host and both pure functions of their inputs:

* ``decode_resized(data, size)``: the stored, deterministic form of an image (evaluation splits, datasets held in
  memory): shorter side to ``size`` (PIL bicubic, antialiased) and a centre crop, as ``resize_shorter_and_crop``.
* ``decode_views(data, boxes_fn, sizes, out)``: the training views of one streamed sample: for each view an
  Inception-style random-resized crop (torchvision's ``RandomResizedCrop.get_params``: 10 attempts of an area
  fraction ``U(scale)`` and a log-uniform aspect ``ratio``, else the centre crop clamped to the ratio range) drawn
  from the *whole* image at its full resolution, resized once (PIL bilinear, antialiased when shrinking, as
  torchvision) to the view's side and written into the packed row ``out``. The device then applies the rest of the
  view (flip, colour, blur, solarize, normalise) and does not crop again (``augment.augment_views`` on a packed
  batch).

Reduced-size decoding: libjpeg(-turbo) can decode a JPEG at 1/2, 1/4 or 1/8 of its size by scaling the inverse DCT,
which skips most of the decoding work. PIL exposes it as ``Image.draft``. Both functions decode at the smallest of
these scales that still gives every crop at least its output side in pixels (for ``decode_resized``: the shorter
side at least ``size``), so nothing is upsampled that a full decode would not have upsampled. On a 500x375 JPEG with
224 px views this rarely applies (a crop must be at least 448 px on its shorter side); on camera-sized photographs
and for 96 px views it cuts decoding several-fold. Other formats (PNG, WebP, ...) decode at full size.

Why the crop is taken here and not on the device (experiments/data/host_crop_cost.py, CPU ms per 500x375 JPEG on
one core of a busy 2-core machine): decode 0.95; decode + two 224 px crops 2.40; a stored 256 px form with the crops
left to the device 3.39 (shorter side to 256 and centre crop, which also drops the image's sides) or 2.08 (whole
image squashed to 256 x 256, which would need each image's aspect on the device). The host crop costs at most 15%
more than the cheapest alternative and is the references' crop: from the whole image at full resolution (a 0.08
crop of a 500x375 image is 122 px wide there, 72 px of a 256 px stored image), with no change to the step.

Pixel conventions are those of ``ssljax.data.sources`` (``to_rgb``): any mode to RGB, 16-bit grayscale scaled,
alpha dropped.

Crop randomness: ``crop_uniforms(seed, step, position, num_views)`` draws the crop parameters from
``np.random.default_rng([CROP_STREAM, seed, step, position])``, where ``position`` is the sample's row in the global
batch: a sample's crops depend on (seed, step, row) only, not on the host, the worker or the number of workers, so
a resumed run and a run on another number of hosts crop exactly alike.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

# Tag of the crop random stream: separates it from the samplers' default_rng([seed, epoch]).
CROP_STREAM = 0x5C0A
ATTEMPTS = 10  # torchvision's number of crop attempts
UNIFORMS_PER_VIEW = 2 * ATTEMPTS + 2
_REDUCTIONS = (8, 4, 2)  # the scales libjpeg's DCT scaling offers through PIL's draft mode (1/8, 1/4, 1/2)


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB: 16-bit grayscale scaled by round(v * 255 / 65535), everything else (palette,
    CMYK, YCbCr, L, LA, RGBA) through ``convert('RGB')`` with the alpha channel dropped."""
    if img.mode == 'RGB':
        return img
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
        # PIL's convert clips 16-bit values at 255; scale the full 16-bit range instead.
        v = np.asarray(img).astype(np.int64)
        if v.min() < 0 or v.max() > 65535:
            raise ValueError(f'integer image with values outside 0..65535 (min {v.min()}, max {v.max()})')
        g = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=-1), 'RGB')
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')  # avoids PIL's warning about byte-transparency palettes
    return img.convert('RGB')


def resize_shorter_and_crop(img: Image.Image, size: int) -> Image.Image:
    """Resizes the shorter side to ``size`` (PIL bicubic) and centre-crops to ``size x size``.

    Longer side becomes ``round(long * size / short)`` (at least ``size``); the crop starts at ``(long - size) // 2``.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if w <= h:
        nw, nh = size, max(size, int(round(h * size / w)))
    else:
        nw, nh = max(size, int(round(w * size / h))), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _as_array(img: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] of an RGB image (through tobytes: measured faster than np.asarray's array interface)."""
    w, h = img.size
    return np.frombuffer(img.tobytes(), np.uint8).reshape(h, w, 3)


def reduction(min_side_over_size: float) -> int:
    """The largest DCT reduction k in (8, 4, 2, 1) with ``min_side_over_size / k >= 1``."""
    for k in _REDUCTIONS:
        if min_side_over_size >= k:
            return k
    return 1


def open_image(data) -> Image.Image:
    """A PIL image, not yet decoded, from encoded bytes or a uint8 [H, W, 3] array (wrapped, not copied)."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(data), 'RGB')
    return Image.open(io.BytesIO(data))


def _decode_reduced(img: Image.Image, k: int) -> tuple[Image.Image, float]:
    """Decodes ``img`` at 1/k of its size where the format allows (JPEG); returns (RGB image, scale applied)."""
    w, h = img.size
    scale = 1.0
    if k > 1 and img.format == 'JPEG':
        # draft picks the largest reduction keeping at least this size; it returns the original image's extent in
        # the reduced pixels, (0, 0, w / k, h / k): the reduced image is ceil(w / k) x ceil(h / k).
        drafted = img.draft('RGB', (-(-w // k), -(-h // k)))
        if drafted is not None:
            scale = drafted[1][2] / w
    img.load()
    return to_rgb(img), scale


def decode_resized(data, size: int | None) -> np.ndarray:
    """Encoded bytes (or an RGB array) -> uint8 [size, size, 3]: shorter side to ``size`` and centre crop, decoded
    at the smallest DCT scale whose shorter side is still >= ``size`` (full size when ``size`` is None)."""
    img = open_image(data)
    k = 1 if size is None else reduction(min(img.size) / size)
    img, _ = _decode_reduced(img, k)
    if size is not None:
        img = resize_shorter_and_crop(img, size)
    return _as_array(img)


# --------------------------------------------------------------------------------------------------------------------
# Random-resized crops.


def crop_box(u: np.ndarray, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]):
    """torchvision's RandomResizedCrop.get_params with its randomness given (``augment.crop_box_from_uniforms``).

    ``u``: UNIFORMS_PER_VIEW draws of U[0, 1): ATTEMPTS area fractions, ATTEMPTS log-aspects, then top and left.
    The first attempt with 0 < w <= W and 0 < h <= H wins, placed at top = floor(u_top (H - h + 1)), left likewise;
    if none fits, the centre crop of the whole image clamped to the ratio range. Returns (top, left, h, w) ints.
    """
    n = ATTEMPTS
    area = float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:n])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[n : 2 * n])
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    valid = np.flatnonzero((w > 0) & (w <= width) & (h > 0) & (h <= height))
    if valid.size:
        hh, ww = int(h[valid[0]]), int(w[valid[0]])
        top = min(int(u[2 * n] * (height - hh + 1)), height - hh)
        left = min(int(u[2 * n + 1] * (width - ww + 1)), width - ww)
        return top, left, hh, ww
    in_ratio = width / height
    if in_ratio < min(ratio):
        ww, hh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        ww, hh = int(round(height * max(ratio))), height
    else:
        ww, hh = width, height
    return (height - hh) // 2, (width - ww) // 2, hh, ww


def crop_uniforms(seed: int, step: int, position: int, num_views: int) -> np.ndarray:
    """float64 [num_views, UNIFORMS_PER_VIEW] crop draws of the sample at row ``position`` of the global batch of
    ``step``: ``default_rng([CROP_STREAM, seed, step, position]).random(...)``."""
    return np.random.default_rng([CROP_STREAM, seed, step, position]).random((num_views, UNIFORMS_PER_VIEW))


def packed_size(sizes: Sequence[int]) -> int:
    """Bytes of one sample's packed views: sum of size^2 * 3 (views in order, each HWC, row-major)."""
    return sum(3 * s * s for s in sizes)


def decode_views(data, uniforms: np.ndarray, views: Sequence, out: np.ndarray) -> None:
    """Writes the random-resized crops of one image for every view into ``out`` (uint8 [packed_size], packed).

    ``views``: objects with ``size``, ``crop_scale`` and ``crop_ratio`` (``augment.ViewConfig``); ``uniforms``:
    ``crop_uniforms(...)`` rows, one per view. The image is decoded once, at the smallest DCT scale at which every
    crop still has at least its view's side in pixels; each crop is then resized once (bilinear) from it.
    """
    img = open_image(data)
    width, height = img.size
    boxes = [crop_box(u, height, width, v.crop_scale, v.crop_ratio) for u, v in zip(uniforms, views)]
    k = reduction(min(min(h, w) / v.size for (_, _, h, w), v in zip(boxes, views)))
    img, scale = _decode_reduced(img, k)
    offset = 0
    for (top, left, h, w), v in zip(boxes, views):
        box = (left * scale, top * scale, min((left + w) * scale, img.size[0]), min((top + h) * scale, img.size[1]))
        view = img.resize((v.size, v.size), Image.BILINEAR, box=box)
        n = 3 * v.size * v.size
        out[offset : offset + n] = np.frombuffer(view.tobytes(), np.uint8)
        offset += n
