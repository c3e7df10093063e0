"""Which carried wheels to install: python wheels.py WHEEL_DIR REQUIREMENTS_TXT -> their paths, space-separated.

A wheel is needed when its distribution is not installed, or is installed at a version outside requirements.txt's
range for it (the GPU machine's image has its own versions and no package registry). Wheels of distributions that
requirements.txt does not name are needed only when absent.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from importlib import metadata

from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def needed(wheel_dir: str, requirements: str) -> list[str]:
    specs = {}
    for line in open(requirements):
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            specs[canonical(req.name)] = req.specifier
    out = []
    for path in sorted(glob.glob(os.path.join(wheel_dir, '*.whl'))):
        name = canonical(os.path.basename(path).split('-')[0])
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(path)
            continue
        if name in specs and not specs[name].contains(version, prereleases=True):
            out.append(path)
    return out


if __name__ == '__main__':
    print(' '.join(needed(sys.argv[1], sys.argv[2])))
