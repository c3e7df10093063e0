"""The streaming input pipeline (ssljax/data/streaming.py, decode.py, pipeline.py): host crops, determinism over
workers, hosts and restarts, unreadable files, data modes by size, lazy evaluation splits, the data benchmark."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, tiny_config
from PIL import Image

from ssljax.data import decode, pipeline, samplers, sources, streaming

SIZES = [(40, 30), (30, 40), (64, 48), (48, 36)]


def make_folder(root, n_train=24, n_test=6, classes=3):
    """Small JPEGs of a few sizes with smooth random content (JPEG-friendly, distinct per file)."""
    rng = np.random.default_rng(0)
    for split, n in (('train', n_train), ('test', n_test)):
        for i in range(n):
            w, h = SIZES[i % len(SIZES)]
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
            folder = root / split / f'c{i % classes}'
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f'{i:03d}.jpg', quality=90)
    return root


def folder_config(root, **overrides):
    c = tiny_config('simclr', **{'dataset': 'image_folder', 'data_dir': str(root), 'image_size': 16,
                                 'augment.size': 16, 'batch_size': 8, 'stream': 'always', 'data_workers': 0,
                                 'eval.max_train_examples': 12})
    for key, value in overrides.items():
        node = c
        for part in key.split('.')[:-1]:
            node = node[part]
        node[key.split('.')[-1]] = value
    return c


def train_data(config):
    from ssljax import parallel
    return pipeline.load_train_data(config, parallel.make_mesh())


def take(it, k):
    out = [next(it) for _ in range(k)]
    it.close()
    return out


def assert_same(a, b):
    for x, y in zip(a, b):
        for k in ('image', 'label', 'index'):
            np.testing.assert_array_equal(x[k], y[k])


# ---------------------------------------------------------------------------------------------------------------------
# Host crops.


def test_crop_box_is_the_device_definition():
    from ssljax.data import augment
    rng = np.random.default_rng(1)
    for h, w, scale, ratio in [(375, 500, (0.08, 1.0), (3 / 4, 4 / 3)), (40, 30, (0.05, 0.4), (3 / 4, 4 / 3)),
                               (20, 200, (0.9, 1.0), (1.0, 1.0))]:  # the last one falls back to the clamped centre
        for _ in range(5):
            u = rng.random(decode.UNIFORMS_PER_VIEW).astype(np.float32)
            box, _ = augment.crop_box_from_uniforms(u, h, w, scale, ratio)
            assert decode.crop_box(u.astype(np.float64), h, w, scale, ratio) == tuple(int(v) for v in box)


def test_decode_views_is_one_resize_of_the_crop_and_reduced_decoding_covers_it(tmp_path):
    rng = np.random.default_rng(2)
    big = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((800, 600), Image.BICUBIC)
    path = tmp_path / 'big.jpg'
    big.save(path, quality=95)
    data = path.read_bytes()
    views = (streaming.CropSpec(24, (0.5, 1.0), (3 / 4, 4 / 3)), streaming.CropSpec(12, (0.5, 1.0), (3 / 4, 4 / 3)))
    u = decode.crop_uniforms(0, 3, 5, 2)
    out = np.zeros(decode.packed_size([24, 12]), np.uint8)
    decode.decode_views(data, u, views, out)
    full = Image.open(path).convert('RGB')
    offset = 0
    for uv, v in zip(u, views):
        top, left, h, w = decode.crop_box(uv, 600, 800, v.crop_scale, v.crop_ratio)
        assert min(h, w) / v.size >= 8  # every crop covers its view 8 times over: decoded at 1/8 scale
        want = np.asarray(full.resize((v.size, v.size), Image.BILINEAR, box=(left, top, left + w, top + h)))
        got = out[offset:offset + 3 * v.size ** 2].reshape(v.size, v.size, 3)
        assert np.abs(got.astype(int) - want).mean() < 3  # the DCT-scaled decode of a smooth image: same picture
        offset += 3 * v.size ** 2
    # A PNG decodes at full size: the crop is exactly PIL's resize of that box.
    png = tmp_path / 'x.png'
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(png)
    decode.decode_views(png.read_bytes(), u[:1], views[:1], out[:3 * 24 * 24])
    top, left, h, w = decode.crop_box(u[0], 30, 40, *views[0][1:])
    want = Image.open(png).convert('RGB').resize((24, 24), Image.BILINEAR, box=(left, top, left + w, top + h))
    np.testing.assert_array_equal(out[:3 * 24 * 24].reshape(24, 24, 3), np.asarray(want))
    # decode_resized: the reduced decode of the stored form stays close to the full one.
    np.testing.assert_allclose(decode.decode_resized(data, 64).astype(float),
                               np.asarray(decode.resize_shorter_and_crop(full, 64)).astype(float), atol=40)


def test_packed_views_skip_the_device_crop():
    import jax

    from ssljax.data import augment
    views = (augment.ViewConfig(8), augment.ViewConfig(4, blur_prob=1.0, solarize_prob=0.5))
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (3, v.size, v.size, 3), dtype=np.uint8) for v in views]
    packed = np.concatenate([c.reshape(3, -1) for c in crops], axis=1)
    key = jax.random.key(0)
    out = jax.jit(augment.augment_views, static_argnums=2)(packed, key, views)
    for i, (view, crop) in enumerate(zip(views, crops)):
        keys = jax.vmap(lambda b, i=i: jax.random.fold_in(jax.random.fold_in(key, i), b))(np.arange(3, dtype=np.uint32))
        want = jax.jit(jax.vmap(lambda im, k, v=view: augment.augment_image(im, k, v, crop=False)))(crop, keys)
        np.testing.assert_allclose(out[i], want, atol=1e-5)
    with pytest.raises(ValueError, match='must be'):
        augment.unpack_views(packed[:, 1:], views)


# ---------------------------------------------------------------------------------------------------------------------
# Determinism: workers, resume, hosts.


def test_stream_batches_same_for_any_workers_and_from_any_step(tmp_path):
    data = train_data(folder_config(make_folder(tmp_path)))
    assert data.mode == 'stream' and not data.on_device and len(data.views) == 2
    ref = take(data.host_batches(0), 5)  # threads of this process
    for b, step in zip(ref, range(5)):
        np.testing.assert_array_equal(b['index'], data.indices(step))
        assert b['image'].shape == (8, 2 * 16 * 16 * 3) and b['image'].dtype == np.uint8
        np.testing.assert_array_equal(b['label'], data.source.labels[b['index']])
    data.workers = 2  # grain worker processes
    assert_same(ref, take(data.host_batches(0), 5))
    data.workers = 0
    assert_same(ref[3:], take(data.host_batches(3), 2))  # a resumed run starts at its step


TWO_PROCESSES = r'''
import json, sys
import numpy as np
sys.path.insert(0, 'tests')
from test_streaming import folder_config
from ssljax import parallel
from ssljax.data import pipeline, sources
root, out = sys.argv[1], sys.argv[2]
config = folder_config(root)
parallel.initialize_distributed(config)
import jax
reads, record = [], sources.FolderSource.record
sources.FolderSource.record = lambda self, i: (reads.append(int(i)), record(self, i))[1]
data = pipeline.load_train_data(config, parallel.make_mesh())
it = data.host_batches(0, num_steps=3)
batches = [next(it) for _ in range(3)]
it.close()
read = sorted(reads)
glob = next(data.batches(0))
np.savez(out, image=np.stack([b['image'] for b in batches]), index=np.stack([b['index'] for b in batches]),
         label=np.stack([b['label'] for b in batches]), reads=np.asarray(read), process=jax.process_index(),
         devices=jax.device_count(), global_shape=np.asarray(glob['image'].shape))
'''


def test_two_processes_on_localhost_read_disjoint_shards_that_make_the_global_batch(tmp_path):
    from test_parallel import free_port
    root = make_folder(tmp_path / 'data')
    port = free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
                   JAX_PROCESS_ID=str(pid), JAX_PLATFORMS='cpu')
        procs.append(subprocess.Popen([sys.executable, '-c', TWO_PROCESSES, str(root), str(tmp_path / f'{pid}.npz')],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    hosts = [np.load(tmp_path / f'{pid}.npz') for pid in range(2)]
    assert [int(h['process']) for h in hosts] == [0, 1] and int(hosts[0]['devices']) == 2
    assert tuple(hosts[0]['global_shape']) == (8, 2 * 16 * 16 * 3)
    one = take(train_data(folder_config(root)).host_batches(0, process_index=0, process_count=1), 3)
    for s, batch in enumerate(one):
        for k in ('image', 'label', 'index'):
            np.testing.assert_array_equal(batch[k], np.concatenate([hosts[0][k][s], hosts[1][k][s]]))
        assert not set(hosts[0]['index'][s]) & set(hosts[1]['index'][s])
    # Each host decoded exactly its own rows, nothing of the other's.
    for h in hosts:
        np.testing.assert_array_equal(h['reads'], np.sort(h['index'].ravel()))


STREAM_FOREVER = r'''
import hashlib, json, sys
sys.path.insert(0, 'tests')
from test_streaming import folder_config, train_data
root, out, start, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = train_data(folder_config(root, data_workers=2))
it = data.host_batches(start, num_steps=steps or None)
for step, b in enumerate(it, start):
    with open(out, 'a') as fh:
        fh.write(json.dumps([step, hashlib.sha1(b['image'].tobytes()).hexdigest(), b['index'].tolist()]) + '\n')
'''


def _stream_proc(root, out, start, steps):
    return subprocess.Popen([sys.executable, '-c', STREAM_FOREVER, str(root), str(out), str(start), str(steps)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_resume_after_kill_gives_the_same_batches(tmp_path):
    import psutil
    root = make_folder(tmp_path / 'data')
    first = _stream_proc(root, tmp_path / 'a.jsonl', 0, 0)  # streams without end
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if (tmp_path / 'a.jsonl').exists() and len((tmp_path / 'a.jsonl').read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-3000:]
    children = psutil.Process(first.pid).children(recursive=True)  # grain workers and the resource tracker
    assert len(children) >= 2
    first.send_signal(signal.SIGKILL)  # mid-stream, as kill -9 or the OOM killer: the run cannot stop its workers
    first.communicate()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f'workers outlived the killed run: {alive}'  # they exit with their parent (ExitWithParent)
    rows = [json.loads(line) for line in (tmp_path / 'a.jsonl').read_text().splitlines() if line.endswith(']')]
    resume_at = len(rows)
    second = _stream_proc(root, tmp_path / 'b.jsonl', resume_at, 3)
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0, err[-3000:]
    rows += [json.loads(line) for line in (tmp_path / 'b.jsonl').read_text().splitlines()]
    ref = take(train_data(folder_config(root)).host_batches(0), resume_at + 3)
    assert [r[0] for r in rows] == list(range(resume_at + 3))
    for (step, digest, index), b in zip(rows, ref):
        assert digest == hashlib.sha1(b['image'].tobytes()).hexdigest() and index == b['index'].tolist(), step


# ---------------------------------------------------------------------------------------------------------------------
# Unreadable files.


def test_corrupt_file_in_a_streamed_folder_is_reported_with_its_path_or_skipped(tmp_path, capfd):
    root = make_folder(tmp_path / 'data')
    bad = root / 'train' / 'c1' / '004.jpg'
    bad.write_bytes(b'\xff\xd8 not really a jpeg')
    config = folder_config(root, data_workers=1)  # raised in a grain worker, re-raised here
    data = train_data(config)
    steps = [s for s in range(6) if data.source.files.index(str(bad)) in data.indices(s)]
    assert steps, 'the corrupt file should be drawn within 6 steps'
    with pytest.raises(sources.UnreadableImageError, match=f'cannot decode image {bad}'):
        take(data.host_batches(0), steps[0] + 1)
    from ssljax import parallel
    workdir = tmp_path / 'w'
    skip = pipeline.load_train_data(folder_config(root, bad_images='skip', data_workers=1), parallel.make_mesh(),
                                    str(workdir))
    batch = take(skip.host_batches(steps[0]), 1)[0]
    bad_index = skip.source.files.index(str(bad))
    assert bad_index not in batch['index'] and batch['image'].shape == (8, 2 * 16 * 16 * 3)
    np.testing.assert_array_equal(batch['label'], skip.source.labels[batch['index']])
    assert f'cannot decode image {bad}' in capfd.readouterr().err
    # The skipped file is listed in the workdir (written by the grain worker), once however often it is met.
    take(skip.host_batches(steps[0]), 1)
    lines = (workdir / 'bad_images-train.txt').read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'{bad}\t'), lines
    # Evaluation of a streamed split reads it block by block, with the same rule.
    test_bad = root / 'test' / 'c0' / '000.jpg'
    test_bad.write_bytes(b'broken')
    with pytest.raises(sources.UnreadableImageError, match=str(test_bad)):
        pipeline.load_split(config, 'test').images.get(np.arange(6))
    assert pipeline.load_split(folder_config(root, bad_images='skip'), 'test', workdir=str(workdir)).images[
        np.arange(6)].shape == (6, 16, 16, 3)
    assert (workdir / 'bad_images-test.txt').read_text().startswith(f'{test_bad}\t')


# ---------------------------------------------------------------------------------------------------------------------
# Modes by size, evaluation splits, cache, benchmark.


def test_data_mode_by_size_and_host_gather_matches_the_device_gather(tmp_path):
    import jax
    root = make_folder(tmp_path / 'data')
    device = train_data(folder_config(root, stream='auto'))
    host = train_data(folder_config(root, stream='auto', device_data_max_mb=0))
    stream = train_data(folder_config(root, stream='auto', device_data_max_mb=0, host_data_max_mb=0))
    assert (device.mode, host.mode, stream.mode) == ('device', 'host', 'stream')
    assert device.on_device and isinstance(host.source, sources.Split)
    assert (pipeline.streams(folder_config(root, stream='never', host_data_max_mb=0))) is False
    gathered = jax.jit(pipeline.gather_batch)(next(device.batches(2)), device.device_arrays)
    hb = host.batches(2)
    got = next(hb)
    hb.close()
    for k in ('image', 'label', 'index'):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(gathered[k]))
    with pytest.raises(ValueError, match='"stream" must be auto, always or never'):
        train_data(folder_config(root, stream='sometimes'))


def test_streamed_evaluation_splits_are_never_read_whole(tmp_path):
    root = make_folder(tmp_path / 'data')
    config = folder_config(root)
    test = pipeline.load_split(config, 'test')
    assert isinstance(test.images, pipeline.LazyImages) and test.images.shape == (6, 16, 16, 3) and len(test) == 6
    whole = sources.load_split('image_folder', 'test', str(root), image_size=16)
    np.testing.assert_array_equal(test.images[np.arange(6)], whole.images)
    np.testing.assert_array_equal(test.images.get([4, 1])['image'], whole.images[[4, 1]])
    np.testing.assert_array_equal(test.labels, whole.labels)
    with pytest.raises(TypeError, match='cannot be read whole'):
        np.asarray(test.images)
    train = pipeline.load_split(config, 'train', max_examples=12)
    assert isinstance(train.images, pipeline.LazyImages) and len(train) == 12
    with pytest.raises(ValueError, match='eval.max_train_examples'):
        pipeline.load_split(config, 'train')


def test_streamed_evaluation_reads_only_the_rows_of_this_process(tmp_path):
    """Evaluation blocks of a split read on demand: each process decodes only the rows its devices hold (here a
    process holding rows 2-3 of every 4-row block, as process 1 of 2 would); the other rows are left zero."""
    import types

    from ssljax import parallel
    from ssljax.evaluation import context
    root = make_folder(tmp_path / 'data')
    test = pipeline.load_split(folder_config(root), 'test')
    asked = []

    class Recording:
        def __len__(self):
            return len(test.images)

        def get(self, indices):
            asked.extend(int(i) for i in indices)
            return test.images.get(indices)

    mesh = parallel.make_mesh()
    ctx = types.SimpleNamespace(_resident={}, batch_size=4, block_sharding=parallel.batch_sharded(mesh),
                                config=types.SimpleNamespace(device_data_max_mb=0),
                                local_rows=lambda rows: np.array([2, 3]))
    blocks = [np.asarray(b) for b in context.EvalContext.blocks(ctx, Recording())]
    assert asked == [2, 3] and len(blocks) == 2  # 6 rows: block 1 holds rows 4, 5 and two padding rows
    np.testing.assert_array_equal(blocks[0][2:], test.images.get([2, 3])['image'])
    assert not blocks[0][:2].any() and not blocks[1].any()
    # One process: every row of a block is its own.
    full = types.SimpleNamespace(block_sharding=parallel.batch_sharded(mesh))
    np.testing.assert_array_equal(context.EvalContext.local_rows(full, 4), np.arange(4))


def test_tfds_datasets_get_the_decoded_cache(tmp_path, monkeypatch):
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        first = sources.load_split('cifar10', 'train', str(tmp_path), cache_dir=str(tmp_path / 'cache'))
        assert len(list((tmp_path / 'cache').glob('cifar10-train-*.images.npy'))) == 1

        def fail(*a, **k):
            raise AssertionError('decoded although cached')

        monkeypatch.setattr(sources.TfdsSource, 'get', fail)
        second = sources.load_split('cifar10', 'train', str(tmp_path), cache_dir=str(tmp_path / 'cache'))
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_bench_data_only_prints_one_json_line(tmp_path, capsys):
    from ssljax import bench
    root = make_folder(tmp_path / 'data')
    bench.main(['--data-only', '--workers', '0', '--steps', '2', '--config', os.path.join(REPO, 'configs/simclr.py'),
                '--config.dataset=image_folder', f'--config.data_dir={root}', '--config.image_size=16',
                '--config.augment.size=16', '--config.batch_size=8', '--config.stream=always'])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out['mode'] == 'stream' and out['images_per_s'] > 0 and out['batch_shape'] == [8, 2 * 16 * 16 * 3]


def test_sampler_is_the_single_source_of_truth(tmp_path):
    """A custom sampler's indices (and state) are what the streamed batches hold."""

    class Reversed(samplers.EpochShuffle):
        name = 'reversed_for_test'

        def indices(self, step, state):
            return super().indices(step, state)[::-1] + state['shift'][0]

    data = train_data(folder_config(make_folder(tmp_path)))
    data.sampler = Reversed(None, data.num_examples - 2, 8, 0)
    data.sampler_state = {'shift': np.asarray([1])}
    for s, b in enumerate(take(data.host_batches(0), 2)):
        np.testing.assert_array_equal(b['index'], data.indices(s))
