"""Host cost per image of the ways a streamed JPEG can reach the device (one core, no pipeline around it).

    python experiments/data/host_crop_cost.py --data_dir /tmp/imagenet_like [--count 400]

Measures, on the first ``count`` training JPEGs of an image folder (experiments/data/make_imagenet_like.py), the
milliseconds per image of:

* ``decode``: the full-size decode alone (PIL / libjpeg-turbo), the floor of every option;
* ``views_2x224``: what ssljax streams: decode once at the smallest DCT scale covering every crop, then each view's
  Inception crop (scale 0.08-1, from the whole image) resized once to 224 (``decode.decode_views``, SimCLR/BYOL);
* ``views_multicrop``: the same for DINO's 2 x 224 (scale 0.4-1) + 6 x 96 (scale 0.05-0.4) views;
* ``stored_256``: the alternative of a fixed stored size with every crop on the device: decode at the smallest DCT
  scale whose shorter side is >= 256, resize the shorter side to 256 and centre-crop (``decode.decode_resized``),
  which also loses the image's sides and crops small views from 256 px instead of full resolution;
* ``stored_256_whole``: the same without losing the sides, the whole image squashed to 256 x 256 (the device would
  then need each image's aspect to undo it).

Prints one JSON line: wall and CPU milliseconds per image of each (best of three passes; on a machine busy with
other work the CPU time is the steadier of the two). BENCHMARKS.md ("Streaming input pipeline") records a run and
the choice it supports.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
from PIL import Image

from ssljax.data import decode, streaming


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data_dir', required=True)
    parser.add_argument('--count', type=int, default=400)
    args = parser.parse_args(argv)
    files = sorted(glob.glob(os.path.join(args.data_dir, 'train', '*', '*')))[: args.count]
    blobs = [open(f, 'rb').read() for f in files]
    two = [streaming.CropSpec(224, (0.08, 1.0), (3 / 4, 4 / 3))] * 2
    multi = [streaming.CropSpec(224, (0.4, 1.0), (3 / 4, 4 / 3))] * 2 + [
        streaming.CropSpec(96, (0.05, 0.4), (3 / 4, 4 / 3))
    ] * 6

    def views(specs):
        out = np.empty(decode.packed_size([v.size for v in specs]), np.uint8)

        def run(i, data):
            decode.decode_views(data, decode.crop_uniforms(0, 0, i, len(specs)), specs, out)

        return run

    def full(i, data):
        img = decode.open_image(data)
        img.load()

    def squashed(i, data):
        img = decode.open_image(data)
        k = decode.reduction(min(img.size) / 256)
        img, _ = decode._decode_reduced(img, k)  # pylint: disable=protected-access
        np.frombuffer(img.resize((256, 256), Image.BILINEAR).tobytes(), np.uint8)

    cases = {
        'decode': full,
        'views_2x224': views(two),
        'views_multicrop': views(multi),
        'stored_256': lambda i, data: decode.decode_resized(data, 256),
        'stored_256_whole': squashed,
    }
    result = {
        'images': len(blobs),
        'mean_kb': round(sum(map(len, blobs)) / len(blobs) / 1e3, 1),
        'loadavg_start': round(os.getloadavg()[0], 2),
    }
    for name, fn in cases.items():
        for i, data in enumerate(blobs[:20]):  # warm-up
            fn(i, data)
        best, best_cpu = float('inf'), float('inf')
        for _ in range(3):  # best of three passes: the least disturbed by other processes
            t0, c0 = time.perf_counter(), time.process_time()
            for i, data in enumerate(blobs):
                fn(i, data)
            best = min(best, (time.perf_counter() - t0) / len(blobs))
            best_cpu = min(best_cpu, (time.process_time() - c0) / len(blobs))
        result[f'{name}_ms'] = round(best * 1e3, 3)
        result[f'{name}_cpu_ms'] = round(best_cpu * 1e3, 3)
    result['loadavg_end'] = round(os.getloadavg()[0], 2)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
