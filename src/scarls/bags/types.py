"""Message types for bags: definitions and type hashes from the installed .msg files.

A bag that `ros2 bag` and Foxglove can read stores, per type, the full message definition (the
type and every nested type, concatenated) and its RIHS01 type hash. Both are built here with the
rosbags type system from the very .msg files this installation was generated from (the
``share/<package>/msg`` folders of the ament prefixes: the ROS packages of the venv and
scarls_interfaces), so the hashes match what the running nodes announce. A package that is not
installed falls back to rosbags' own copy of the ROS 2 Kilted definitions.

No rclpy here: `to-zarr`, `export` and the tests use this offline.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from scarls.bags.errors import BagError

__all__ = ['TypeRegistry', 'default_registry', 'msg_dirs', 'split_type']

_TYPE_RE = re.compile(r'^([A-Za-z][A-Za-z0-9_]*)/(?:msg/)?([A-Za-z][A-Za-z0-9_]*)$')
_REF_RE = re.compile(r'^\s*([A-Za-z][A-Za-z0-9_]*)/(?:msg/)?[A-Za-z][A-Za-z0-9_]*', re.M)


def split_type(msgtype: str) -> tuple[str, str]:
    """'pkg/msg/Name' (or 'pkg/Name') -> ('pkg', 'Name'); BagError on anything else."""
    m = _TYPE_RE.match(msgtype)
    if not m:
        raise BagError(f'{msgtype!r} is not a message type name (expected package/msg/Name)')
    return m.group(1), m.group(2)


def _prefixes() -> list[Path]:
    """Ament prefixes to search: $AMENT_PREFIX_PATH, then this Python's prefix (the venv)."""
    out = [Path(p) for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    out.append(Path(sys.prefix))
    return out


def msg_dirs(package: str) -> list[Path]:
    """The ``share/<package>/msg`` folders holding .msg files, first prefix first."""
    return [d for p in _prefixes() if (d := p / 'share' / package / 'msg').is_dir()]


class TypeRegistry:
    """A rosbags typestore filled on demand, one package (and what it references) at a time."""

    def __init__(self) -> None:
        self.store: Typestore = get_typestore(Stores.EMPTY)
        self._loaded: set[str] = set()
        self._fallback: Typestore | None = None
        self._lock = threading.RLock()

    def _load_package(self, package: str) -> None:
        if package in self._loaded:
            return
        self._loaded.add(package)
        dirs = msg_dirs(package)
        if not dirs:
            return
        texts = {}
        for path in sorted(dirs[0].glob('*.msg')):
            texts[f'{package}/msg/{path.stem}'] = path.read_text(encoding='utf-8')
        for text in texts.values():
            for ref in set(_REF_RE.findall(text)):
                if ref != package:
                    self._load_package(ref)
        types = {}
        for name, text in texts.items():
            types.update(get_types_from_msg(text, name))
        # a type already learnt from a bag's stored definition keeps that definition
        self.store.register({k: v for k, v in types.items() if k not in self.store.fielddefs})

    def _from_fallback(self, msgtype: str) -> bool:
        """Copy a type (and its nested types) from rosbags' ROS 2 Kilted definitions."""
        if self._fallback is None:
            self._fallback = get_typestore(Stores.ROS2_KILTED)
        if msgtype not in self._fallback.fielddefs:
            return False
        todo, types = [msgtype], {}
        while todo:
            name = todo.pop()
            if name in types or name in self.store.fielddefs:
                continue
            types[name] = self._fallback.fielddefs[name]
            todo.extend(self._nested(self._fallback, name))
        self.store.register(types)
        return True

    @staticmethod
    def _nested(store: Typestore, name: str) -> list[str]:
        out = []
        for _, (kind, spec) in store.fielddefs[name][1]:
            inner = spec[0] if isinstance(spec, tuple) and kind > 1 else spec
            if isinstance(inner, tuple) and len(inner) == 2 and isinstance(inner[0], int) \
                    and inner[0] == 2:
                out.append(inner[1])
            elif isinstance(inner, str):
                out.append(inner)
        return out

    def ensure(self, msgtype: str) -> str:
        """The canonical 'pkg/msg/Name' of a known type; BagError if no definition is found."""
        package, name = split_type(msgtype)
        full = f'{package}/msg/{name}'
        with self._lock:
            if full not in self.store.fielddefs:
                self._load_package(package)
            if full not in self.store.fielddefs and not self._from_fallback(full):
                raise BagError(
                    f'no message definition for {full}: neither share/{package}/msg/{name}.msg '
                    'in the ament prefixes nor a standard ROS 2 type; source the workspace that '
                    'defines it (AMENT_PREFIX_PATH)')
        return full

    def has(self, msgtype: str) -> bool:
        try:
            self.ensure(msgtype)
        except BagError:
            return False
        return True

    def definition(self, msgtype: str) -> tuple[str, str]:
        """(concatenated ros2msg definition, RIHS01 hash) as stored in bags."""
        full = self.ensure(msgtype)
        with self._lock:
            msgdef, _ = self.store.generate_msgdef(full, ros_version=2)
            return msgdef, self.store.hash_rihs01(full)

    def register_definition(self, msgtype: str, msgdef: str) -> bool:
        """Learn a type from a definition stored in a bag (for bags of types not installed
        here); False if it cannot be parsed."""
        with self._lock:
            if msgtype in self.store.fielddefs:
                return True
            try:
                types = _parse_concatenated(msgtype, msgdef)
                self.store.register({k: v for k, v in types.items()
                                     if k not in self.store.fielddefs})
            except Exception:  # noqa: BLE001 - any parser error: the type stays unknown
                return False
            return msgtype in self.store.fielddefs

    def deserialize(self, data: bytes | memoryview, msgtype: str):
        self.ensure(msgtype)
        return self.store.deserialize_cdr(data, msgtype)

    def serialize(self, msg, msgtype: str) -> bytes:
        self.ensure(msgtype)
        return bytes(self.store.serialize_cdr(msg, msgtype))

    def message(self, msgtype: str):
        """The rosbags dataclass of a type (to build messages offline)."""
        full = self.ensure(msgtype)
        return self.store.types[full]


def _parse_concatenated(msgtype: str, msgdef: str) -> dict:
    """Parse a rosbag2 'ros2msg' definition: the type, then '====' / 'MSG: pkg/Name' blocks."""
    sep = re.compile(r'^={10,}\s*$', re.M)
    blocks = sep.split(msgdef)
    types = dict(get_types_from_msg(blocks[0], msgtype))
    for block in blocks[1:]:
        block = block.strip('\n')
        first, _, rest = block.partition('\n')
        if not first.startswith('MSG:'):
            continue
        name = first[4:].strip()
        package, short = split_type(name)
        types.update(get_types_from_msg(rest, f'{package}/msg/{short}'))
    return types


_DEFAULT: TypeRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> TypeRegistry:
    """One process-wide registry (parsing .msg files is the slow part; do it once)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TypeRegistry()
        return _DEFAULT
