"""Does the installed ROS 2 middleware have DDS Security (authentication, access control)?

ROS 2 secures DDS with *enclaves*: ``ROS_SECURITY_ENABLE=true``, ``ROS_SECURITY_STRATEGY``
(``Enforce`` | ``Permissive``), ``ROS_SECURITY_KEYSTORE`` and a node's enclave (``--ros-args
--enclave /x`` or ``ROS_SECURITY_ENCLAVE_OVERRIDE``) point each participant at its certificates
and signed governance/permissions documents. That needs Fast DDS built with its security
plugins (CMake ``-DSECURITY=ON``: ``builtin.PKI-DH`` authentication, ``builtin.Access-
Permissions`` access control, ``builtin.AES-GCM-GMAC`` cryptography) and an rmw_fastrtps built
against it. :func:`dds_security_support` looks for both in the installed shared libraries (no
ROS import, nothing loaded): the plugin names in the Fast DDS library and, in the rmw, the
message it has instead of security support.

Measured on the wheels this project installs (docs/SECURITY.md, "Fleet rendezvous and DDS"):
neither has it, and rmw_fastrtps refuses to create a node that is given a keystore enclave
("This Fast DDS version doesn't have the security libraries"), so a secured configuration
fails closed instead of running unsecured.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ['DdsSecuritySupport', 'dds_security_support', 'middleware_libraries']

#: Names of Fast DDS's builtin security plugins, as its plugin factory compares them.
PLUGIN_MARKERS: tuple[bytes, ...] = (b'builtin.PKI-DH', b'builtin.Access-Permissions',
                                     b'builtin.AES-GCM-GMAC')
#: What rmw_fastrtps says instead when it was built without security.
RMW_WITHOUT_SECURITY = b"doesn't have the security libraries"

_FASTDDS = ('libfastdds.so', 'libfastrtps.so')
_RMW = ('librmw_fastrtps_shared_cpp.so',)


@dataclasses.dataclass(frozen=True)
class DdsSecuritySupport:
    """What :func:`dds_security_support` found."""

    fastdds: tuple[str, ...]
    """Fast DDS libraries inspected."""
    rmw: tuple[str, ...]
    """rmw_fastrtps libraries inspected."""
    plugins: tuple[str, ...]
    """Security plugin names found in the Fast DDS libraries (all three: compiled in)."""
    rmw_supports_security: bool
    """The rmw was built with security (it lacks the 'no security libraries' message)."""

    @property
    def available(self) -> bool:
        """Authentication, access control and encryption can be used through ROS 2."""
        return (bool(self.fastdds) and bool(self.rmw) and self.rmw_supports_security
                and len(self.plugins) == len(PLUGIN_MARKERS))

    def describe(self) -> str:
        """One line for a log or a report."""
        if not self.fastdds:
            return 'no Fast DDS library found'
        if self.available:
            return 'DDS Security is compiled in (' + ', '.join(self.plugins) + ')'
        missing = [m.decode() for m in PLUGIN_MARKERS if m.decode() not in self.plugins]
        return ('DDS Security is not compiled in: Fast DDS lacks ' + ', '.join(missing)
                + ('' if self.rmw_supports_security else
                   '; rmw_fastrtps was built without security'))


def _library_dirs(extra: Iterable[str | os.PathLike] = (), system: bool = True) -> list[Path]:
    dirs = [Path(d) for d in extra]
    if system:
        dirs.append(Path(sys.prefix) / 'lib')
        for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
            if prefix:
                dirs.append(Path(prefix) / 'lib')
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else None
        if key and key not in seen:
            seen.add(key)
            out.append(d)
    return out


def middleware_libraries(dirs: Iterable[str | os.PathLike] = (), *, system: bool = True
                         ) -> tuple[list[Path], list[Path]]:
    """(Fast DDS libraries, rmw_fastrtps libraries) in ``dirs`` and, with ``system``, this
    Python's ``lib`` and the ``lib`` of every ``AMENT_PREFIX_PATH`` entry (each file once)."""
    fastdds: dict[str, Path] = {}
    rmw: dict[str, Path] = {}
    for d in _library_dirs(dirs, system):
        for p in sorted(d.iterdir()):
            if not p.is_file():
                continue
            real = str(p.resolve())
            if p.name.startswith(_FASTDDS):
                fastdds.setdefault(real, p)
            elif p.name.startswith(_RMW):
                rmw.setdefault(real, p)
    return list(fastdds.values()), list(rmw.values())


def _contains(path: Path, markers: Sequence[bytes]) -> set[bytes]:
    data = path.read_bytes()
    return {m for m in markers if m in data}


def dds_security_support(dirs: Iterable[str | os.PathLike] = (), *, system: bool = True
                         ) -> DdsSecuritySupport:
    """Inspect the installed middleware libraries (see the module docstring); ``dirs``: more
    folders to look in, ``system=False``: only those."""
    fastdds, rmw = middleware_libraries(dirs, system=system)
    found: set[bytes] = set()
    for p in fastdds:
        found |= _contains(p, PLUGIN_MARKERS)
    rmw_ok = bool(rmw) and not any(_contains(p, (RMW_WITHOUT_SECURITY,)) for p in rmw)
    return DdsSecuritySupport(
        fastdds=tuple(str(p) for p in fastdds), rmw=tuple(str(p) for p in rmw),
        plugins=tuple(m.decode() for m in PLUGIN_MARKERS if m in found),
        rmw_supports_security=rmw_ok)


if __name__ == '__main__':
    support = dds_security_support()
    print(support.describe())
    for lib in support.fastdds + support.rmw:
        print(f'  {lib}')
    sys.exit(0 if support.available else 1)
