"""Unreadable files and empty class folders (``bad_images``): reporting them, and reading around them.

Loading a split into memory decodes every file once and collects every file that cannot be decoded (path and a
short reason) and every class folder without image files. ``bad_images='error'`` (the default) then stops with
``BadImagesError``: one line with the count and the first few paths, the full list written to ``bad_images_report``
(or next to the cache in ``cache_dir``) or, when neither is given, in the message itself (``_report_bad``).
``bad_images='skip'`` warns with the count on stderr and keeps the readable files; an empty class folder is dropped
(an empty ``train`` class folder drops the class). Either way the list is ``Split.bad_files``, for the caller to keep.

A folder read on demand (``open_source``: streamed training, evaluation of a streamed split) meets unreadable files
one at a time: 'error' raises ``UnreadableImageError`` naming the file, 'skip' reads the next readable file in its
place with a warning naming both (``substitute_unreadable``), and lists it once in the report (``append_bad_image``).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, Sequence

from ssljax.data.sources.base import UnreadableImageError

BAD_IMAGES_MODES = ('error', 'skip')
# How many problems the one-line message shows when the full list is in a file.
_SHOWN = 3


class BadImagesError(ValueError):
    """Unreadable images or empty class folders with ``bad_images='error'``; ``bad`` lists (path, reason)."""

    def __init__(self, message: str, bad: list[tuple[str, str]], report_path: str | None):
        super().__init__(message)
        self.bad, self.report_path = bad, report_path


_EMPTY_FOLDER = 'empty class folder: no image files'


def _problem_text(bad: Sequence[tuple[str, str]]) -> str:
    """'cannot decode image PATH: REASON; empty class folder PATH; ...'."""
    parts = []
    for path, reason in bad:
        if reason == _EMPTY_FOLDER:
            parts.append(f'empty class folder {path}')
        elif reason.startswith('class '):
            parts.append(f'{path}: {reason}')
        else:
            parts.append(f'cannot decode image {path}: {reason}')
    return '; '.join(parts)


def write_bad_images_report(path: str, bad: Sequence[tuple[str, str]]) -> None:
    """Writes one ``<path>\t<reason>`` line per problem to ``path`` (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}-{threading.get_ident()}'
    with open(tmp, 'w') as fh:
        fh.writelines(f'{p}\t{r}\n' for p, r in bad)
    os.replace(tmp, path)


def _report_bad(bad: list[tuple[str, str]], mode: str, where: str, report_path: str | None) -> None:
    """Stops (``'error'``) or warns (``'skip'``) about ``bad`` in one line; writes the full list to ``report_path``."""
    if not bad:
        return
    if report_path is not None:
        write_bad_images_report(report_path, bad)
    folders = sum(r == _EMPTY_FOLDER for _, r in bad)
    files = len(bad) - folders
    counts = ' and '.join(
        t
        for t in (
            f'{files} unreadable file{"s" * (files > 1)}' if files else '',
            f'{folders} empty class folder{"s" * (folders > 1)}' if folders else '',
        )
        if t
    )
    if report_path is not None:
        more = f'; and {len(bad) - _SHOWN} more' if len(bad) > _SHOWN else ''
        listing = f'{_problem_text(bad[:_SHOWN])}{more} (full list in {report_path})'
    else:
        listing = _problem_text(bad)
    if mode == 'error':
        raise BadImagesError(
            f'{counts} in image folder {where}: {listing}. Fix or remove them, or set '
            "bad_images='skip' (--config.bad_images=skip) to train without them",
            bad,
            report_path,
        )
    print(
        f'ssljax: warning: bad_images=skip: leaving out {counts} in image folder {where}: {listing}',
        file=sys.stderr,
        flush=True,
    )


# How many following examples ``substitute_unreadable`` tries before giving up.
_SUBSTITUTE_TRIES = 64


def append_bad_image(path: str, image: str, reason: str) -> None:
    """Adds ``<image>\t<reason>`` to the report at ``path`` unless the image is listed there already (files met one
    at a time while streaming: a file skipped every epoch, or by several worker processes, is listed once, bar a
    race between two processes meeting it at the same moment)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a+') as fh:
        fh.seek(0)
        if any(line.split('\t', 1)[0] == image for line in fh):
            return
        fh.write(f'{image}\t{reason}\n')


def substitute_unreadable(
    i: int,
    n: int,
    read: Callable[[int], object],
    describe: Callable[[int], str],
    bad_images: str,
    report: str | None = None,
) -> tuple[int, object]:
    """``(i, read(i))``, or with ``bad_images='skip'`` the first readable of i + 1, i + 2, ... (mod n).

    For data read on demand (streamed training, evaluation of a streamed split), where unreadable files are met one
    at a time instead of listed in advance. ``read`` raises UnreadableImageError for an unreadable example; with
    ``bad_images='error'`` that error (naming the file) propagates. When skipping, one warning line on stderr names
    the unreadable file and its replacement: the batch keeps its size and the run stays a deterministic function of
    (seed, step), and the replacement's label and index go with its image. ``report``: a file that gets the skipped
    file's ``<path>\t<reason>`` line (``append_bad_image``).
    """
    try:
        return i, read(i)
    except UnreadableImageError as e:
        if bad_images != 'skip':
            raise
        first = e
    for k in range(1, min(n, _SUBSTITUTE_TRIES + 1)):
        j = (i + k) % n
        try:
            value = read(j)
        except UnreadableImageError:
            continue
        print(
            f'ssljax: warning: bad_images=skip: cannot decode image {first.path}: {first.reason}; '
            f'using {describe(j)} in its place' + (f' (listed in {report})' if report else ''),
            file=sys.stderr,
            flush=True,
        )
        if report:
            append_bad_image(report, first.path, first.reason)
        return j, value
    raise UnreadableImageError(
        first.path, f'{first.reason}; and the next {min(n - 1, _SUBSTITUTE_TRIES)} examples are unreadable too'
    )
