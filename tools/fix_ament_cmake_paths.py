"""Rewrite the include paths baked into the ROS 2 wheels' CMake exports.

The PyPI wheels were built on a machine whose Python lived under /opt/python/cp311-cp311; their
exported CMake files name that interpreter's include dirs, which CMake rejects as non-existent
when a package that depends on them (scarls_interfaces) is built. This points them at the
running interpreter's include dir and numpy's. Idempotent.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

PY_INCLUDE = sysconfig.get_paths()['include']
NUMPY_INCLUDE = numpy.get_include()
PATTERN_NUMPY = re.compile(
    r'/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/[^;" ]*include')
PATTERN_PY = re.compile(r'/opt/python/cp311-cp311/include/python3\.11')


def main() -> int:
    share = Path(sys.prefix) / 'share'
    changed = 0
    for path in share.glob('*/cmake/*.cmake'):
        text = path.read_text()
        if '/opt/python/cp311-cp311' not in text:
            continue
        new = PATTERN_NUMPY.sub(NUMPY_INCLUDE, text)
        new = PATTERN_PY.sub(PY_INCLUDE, new)
        if new != text:
            path.write_text(new)
            changed += 1
    sys.stdout.write(f'fixed include paths in {changed} CMake export files\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
