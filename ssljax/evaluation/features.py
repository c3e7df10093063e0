"""Feature extraction with a frozen encoder, in fixed-shape batches."""

from __future__ import annotations

import numpy as np


def extract_features(encode_fn, images_uint8: np.ndarray, batch_size: int, preprocess) -> np.ndarray:
    """Encode every image: returns float32 [N, D] with row i = encode_fn(preprocess(images_uint8[i:i+1]))[0].

    Images are fed in batches of exactly `batch_size` (the last batch is padded with zero images and the padding
    stripped), so a jitted `encode_fn` compiles once. Batches are dispatched before any result is read back, which
    lets an asynchronous backend overlap host and device work.

    Args:
      encode_fn: batch of preprocessed images -> [batch_size, D] features (jitted by the caller, eval mode).
      images_uint8: [N, ...] images, uint8.
      batch_size: images per call, >= 1.
      preprocess: uint8 batch -> float batch accepted by encode_fn.
    """
    images = np.asarray(images_uint8)
    if images.ndim < 1 or images.shape[0] == 0:
        raise ValueError(f"extract_features: no images to encode (shape {images.shape})")
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    outputs = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        valid = batch.shape[0]
        if valid < batch_size:
            pad = np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        outputs.append((encode_fn(preprocess(batch)), valid))
    feats = []
    for out, valid in outputs:
        out = np.asarray(out, np.float32)
        if out.ndim != 2 or out.shape[0] != batch_size:
            raise ValueError(f"extract_features: encode_fn must return [{batch_size}, D], got {out.shape}")
        feats.append(out[:valid])
    return np.concatenate(feats, axis=0)
