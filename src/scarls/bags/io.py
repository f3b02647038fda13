"""Reading and writing rosbag2 bags (MCAP or SQLite 3) with the rosbags library, plus the
recovery of bags whose recorder was killed.

A bag is a folder: ``metadata.yaml`` + one storage file (``<name>.mcap`` or ``<name>.db3``).
Every topic is stored with its type, its full message definition, its RIHS01 type hash and the
QoS profiles its publishers offered (rosbag2 metadata version 9, the one `ros2 bag` of Jazzy and
Kilted write), so `ros2 bag info/play` and Foxglove read these bags like their own.

Messages are kept as serialized CDR bytes throughout: nothing here decodes a message unless a
caller asks (:meth:`BagReader.decoded`).

No rclpy here.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError, WriterError

from scarls.bags.errors import BagError
from scarls.bags.types import TypeRegistry, default_registry

__all__ = ['STORAGES', 'BagMessage', 'BagReader', 'BagTopic', 'BagWriter', 'open_bag',
           'repair_bag']

log = logging.getLogger(__name__)

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
BAG_VERSION = 9
_MCAP_MAGIC = b'\x89MCAP0\r\n'
REPAIR_HINT = ('the recording was not closed (recorder killed?) or the file was cut short: '
               '`scarls bag repair {bag}` writes a readable copy with every complete message')


@dataclass(frozen=True)
class BagTopic:
    """One topic of a bag."""

    name: str
    msgtype: str
    count: int
    offered_qos: tuple[Qos, ...] = ()
    msgdef: str = ''
    type_hash: str = ''


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp: int            # ns: receive time at the recorder
    data: bytes               # serialized CDR, as on the wire


class BagWriter:
    """Write one new bag (refuses to overwrite).

    ``add_topic`` stores the message definition and type hash of each type from the installed
    .msg files (:class:`~scarls.bags.types.TypeRegistry`) unless given. ``flush`` makes what
    was written so far durable: the MCAP writer closes its pending chunk, the SQLite writer
    commits - so a recording killed with SIGKILL loses at most the last second (see
    :func:`repair_bag`). ``close`` writes the MCAP summary/footer and metadata.yaml.
    """

    def __init__(self, path: str | os.PathLike[str], storage: str = 'mcap', *,
                 registry: TypeRegistry | None = None,
                 custom_data: dict[str, str] | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f'unknown storage {storage!r}: use one of {sorted(STORAGES)}')
        self.path = Path(path)
        self.storage = storage
        self.registry = registry or default_registry()
        try:
            self._writer = Writer(self.path, version=BAG_VERSION,
                                  storage_plugin=STORAGES[storage])
            for key, value in (custom_data or {}).items():
                self._writer.set_custom_data(key, str(value))
            self._writer.open()
        except WriterError as exc:
            raise BagError(f'{self.path}: cannot create the bag: {exc} (choose a new '
                           'output folder; bags are never overwritten)') from exc
        except OSError as exc:
            raise BagError(f'{self.path}: cannot create the bag: {exc}') from exc
        self.connections: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}
        self.closed = False

    def add_topic(self, topic: str, msgtype: str, offered_qos: Iterable[Qos] = (), *,
                  msgdef: str | None = None, type_hash: str | None = None) -> Connection:
        if topic in self.connections:
            return self.connections[topic]
        if msgdef is None or not type_hash:
            msgtype = self.registry.ensure(msgtype)
            msgdef, type_hash = self.registry.definition(msgtype)
        try:
            conn = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=type_hash,
                                               offered_qos_profiles=list(offered_qos))
        except WriterError as exc:
            raise BagError(f'{self.path}: cannot add topic {topic}: {exc}') from exc
        self.connections[topic] = conn
        self.counts[topic] = 0
        return conn

    def write(self, topic: str, timestamp: int, data: bytes | memoryview) -> None:
        conn = self.connections.get(topic)
        if conn is None:
            raise BagError(f'{self.path}: topic {topic} was not added before writing')
        self._writer.write(conn, int(timestamp), data)
        self.counts[topic] += 1

    def flush(self) -> None:
        """Make everything written so far durable (see the class doc)."""
        storage = self._writer.storage
        if storage is None:
            return
        # rosbags' storage writers (pinned version): McapWriter keeps the open chunk in memory
        # and has close_chunk(); Sqlite3Writer keeps one transaction open until close()
        if hasattr(storage, 'close_chunk'):
            if storage.chunk.msgs:
                storage.close_chunk()
            storage.bio.flush()
        elif hasattr(storage, 'conn'):
            storage.conn.commit()

    @property
    def storage_file(self) -> Path:
        return self.path / f'{self.path.name}.{"mcap" if self.storage == "mcap" else "db3"}'

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.close()
        except (WriterError, OSError) as exc:
            raise BagError(f'{self.path}: closing the bag failed: {exc}') from exc

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reader_error(path: Path, exc: Exception) -> BagError:
    text = str(exc)
    unclosed = ('metadata' in text and 'does not exist' in text) or 'end magic' in text \
        or 'footer' in text.lower() or 'summary' in text.lower()
    if unclosed:
        return BagError(f'{path}: {text.rstrip(".")}: ' + REPAIR_HINT.format(bag=path))
    return BagError(f'{path}: not a readable rosbag2 bag: {text.rstrip(".")} (is it a bag '
                    'folder with metadata.yaml and its .mcap or .db3 file?)')


class BagReader:
    """Read a closed bag (MCAP or SQLite 3, written by this project or by `ros2 bag record`)."""

    def __init__(self, path: str | os.PathLike[str], registry: TypeRegistry | None = None) -> None:
        self.path = Path(path)
        self.registry = registry or default_registry()
        if not self.path.exists():
            raise BagError(f'{self.path}: no such bag (expected a folder with metadata.yaml)')
        if self.path.is_dir() and not (self.path / 'metadata.yaml').exists():
            if any(self.path.glob('*.mcap')) or any(self.path.glob('*.db3')):
                raise BagError(f'{self.path}: metadata.yaml is missing: '
                               + REPAIR_HINT.format(bag=self.path))
            raise BagError(f'{self.path}: not a readable rosbag2 bag (no metadata.yaml and no '
                           '.mcap or .db3 file in it)')
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, FileNotFoundError, KeyError, ValueError, OSError,
                struct.error) as exc:
            raise _reader_error(self.path, exc) from exc
        self.topics: dict[str, BagTopic] = {}
        self._conns: dict[str, list[Connection]] = {}
        for conn in self._reader.connections:
            known = self.topics.get(conn.topic)
            qos = tuple(getattr(conn.ext, 'offered_qos_profiles', ()) or ())
            count = conn.msgcount + (known.count if known else 0)
            self.topics[conn.topic] = BagTopic(conn.topic, conn.msgtype, count, qos,
                                               conn.msgdef.data if conn.msgdef else '',
                                               conn.digest or '')
            self._conns.setdefault(conn.topic, []).append(conn)

    @property
    def custom_data(self) -> dict[str, str]:
        meta = getattr(self._reader.storage, 'metadata', None)
        return dict(getattr(meta, 'custom', None) or {})

    @property
    def start_time(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_time(self) -> int:
        return int(self._reader.end_time)

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    def messages(self, topics: Iterable[str] | None = None,
                 start_ns: int | None = None) -> Iterator[BagMessage]:
        """Messages in receive-time order; BagError (naming the file) if the data is corrupt."""
        wanted = set(self.topics) if topics is None else set(topics)
        conns = [c for t in wanted for c in self._conns.get(t, [])]
        if not conns:
            return
        try:
            for conn, ts, data in self._reader.messages(connections=conns, start=start_ns):
                yield BagMessage(conn.topic, conn.msgtype, ts, bytes(data))
        except (ReaderError, KeyError, ValueError, OSError, struct.error,
                sqlite3.Error) as exc:
            raise BagError(f'{self.path}: the bag is corrupt after the messages read so far: '
                           f'{exc}; ' + REPAIR_HINT.format(bag=self.path)) from exc

    def decoded(self, message: BagMessage) -> Any:
        """A message decoded with the definition stored in the bag (or the installed one)."""
        topic = self.topics[message.topic]
        if topic.msgdef:
            self.registry.register_definition(topic.msgtype, topic.msgdef)
        return self.registry.deserialize(message.data, message.msgtype)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bag(path: str | os.PathLike[str]) -> BagReader:
    return BagReader(path)


# -- recovery of unclosed bags ---------------------------------------------------------------

@dataclass
class _Scan:
    """Receives what a scan finds: topics first (before their messages), then messages."""

    on_topic: Callable[[str, dict[str, Any]], None]
    on_message: Callable[[str, int, bytes], None]
    topics: set[str] = field(default_factory=set)
    complete: bool = True
    note: str = ''

    def topic(self, name: str, info: dict[str, Any]) -> None:
        if name not in self.topics:
            self.topics.add(name)
            self.on_topic(name, info)


def _mcap_strings(buf: io.BytesIO) -> str:
    (n,) = struct.unpack('<I', buf.read(4))
    return buf.read(n).decode('utf-8')


def _scan_mcap(path: Path, scan: _Scan) -> None:
    """Every complete record of an MCAP file, in file order, tolerating a cut-off end."""
    from rosbags.rosbag2.storage_mcap import decompress, get_qos

    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, str] = {}

    def handle(op: int, body: bytes) -> bool:
        rec = io.BytesIO(body)
        if op == 0x03:
            (sid,) = struct.unpack('<H', rec.read(2))
            name, _enc, data = _mcap_strings(rec), _mcap_strings(rec), _mcap_strings(rec)
            schemas[sid] = (name, data)
        elif op == 0x04:
            cid, sid = struct.unpack('<HH', rec.read(4))
            topic, _enc = _mcap_strings(rec), _mcap_strings(rec)
            (mlen,) = struct.unpack('<I', rec.read(4))
            meta = rec.read(mlen)
            name, data = schemas.get(sid, ('', ''))
            channels[cid] = topic
            scan.topic(topic, {'type': name, 'msgdef': data, 'hash': '', 'qos': get_qos(meta)})
        elif op == 0x05:
            cid, _seq, log_time, _pub = struct.unpack('<HIQQ', rec.read(22))
            if cid in channels:
                scan.on_message(channels[cid], log_time, rec.read())
        elif op == 0x06:
            _s, _e, usize, crc = struct.unpack('<QQQI', rec.read(28))
            compression = _mcap_strings(rec)
            (csize,) = struct.unpack('<Q', rec.read(8))
            inner = decompress(rec.read(csize), compression, usize, crc)
            records(io.BytesIO(inner), len(inner))
        elif op == 0x02:
            return False
        return True

    def records(f, size: int | None) -> bool:
        while True:
            head = f.read(9)
            if not head:
                return True
            if len(head) < 9:
                raise EOFError('record header cut off')
            op, n = struct.unpack('<BQ', head)
            body = f.read(n)
            if len(body) < n:
                raise EOFError(f'record of {n} bytes cut off')
            if not handle(op, body):
                return False

    with path.open('rb') as f:
        if f.read(8) != _MCAP_MAGIC:
            raise BagError(f'{path}: not an MCAP file (bad magic bytes)')
        try:
            records(f, None)
        except (EOFError, struct.error, UnicodeDecodeError, ReaderError) as exc:
            scan.complete = False
            scan.note = f'stopped at byte {f.tell()}: {exc}'


def _scan_sqlite(path: Path, scan: _Scan) -> None:
    from rosbags.rosbag2.metadata import parse_qos

    try:
        db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
        try:
            defs = {}
            try:
                defs = {t: d for t, d in db.execute(
                    'SELECT topic_type, encoded_message_definition FROM message_definitions')}
            except sqlite3.Error:
                pass
            topics = {}
            for tid, name, typ, qos, *rest in db.execute('SELECT * FROM topics'):
                qos_profiles = []
                if qos:
                    try:
                        qos_profiles = parse_qos(qos)
                    except Exception:  # noqa: BLE001 - unparsable QoS: store none
                        qos_profiles = []
                type_hash = next((x for x in rest if isinstance(x, str)
                                  and x.startswith('RIHS')), '')
                topics[tid] = name
                scan.topic(name, {'type': typ, 'msgdef': defs.get(typ, ''), 'hash': type_hash,
                                  'qos': qos_profiles})
            for tid, ts, data in db.execute(
                    'SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp'):
                if tid in topics:
                    scan.on_message(topics[tid], ts, bytes(data))
        finally:
            db.close()
    except sqlite3.Error as exc:
        scan.complete = False
        scan.note = f'SQLite error: {exc}'


def repair_bag(src: str | os.PathLike[str], dst: str | os.PathLike[str],
               storage: str | None = None) -> dict[str, Any]:
    """Write a closed copy of a bag whose recorder died (no metadata.yaml, no MCAP footer) or
    whose storage file was cut short: every complete message is kept. Returns a report."""
    src = Path(src)
    files = sorted([*src.glob('*.mcap'), *src.glob('*.db3')]) if src.is_dir() else [src]
    if not files:
        raise BagError(f'{src}: no .mcap or .db3 storage file found to repair')
    storage_file = files[0]
    if storage_file.suffix not in ('.mcap', '.db3'):
        raise BagError(f'{storage_file}: unknown storage file (expected .mcap or .db3)')
    storage = storage or ('mcap' if storage_file.suffix == '.mcap' else 'sqlite3')
    registry = default_registry()
    skipped: list[str] = []
    with BagWriter(dst, storage, registry=registry) as writer:
        def on_topic(topic: str, info: dict[str, Any]) -> None:
            msgtype, msgdef, type_hash = info['type'], info['msgdef'], info['hash']
            try:
                if msgdef and not type_hash:
                    if registry.has(msgtype):
                        type_hash = registry.definition(msgtype)[1]
                    elif registry.register_definition(msgtype, msgdef):
                        type_hash = registry.store.hash_rihs01(msgtype)
                writer.add_topic(topic, msgtype, info['qos'],
                                 msgdef=msgdef or None, type_hash=type_hash or None)
            except BagError as exc:
                skipped.append(f'{topic}: {exc}')

        def on_message(topic: str, ts: int, data: bytes) -> None:
            if topic in writer.connections:
                writer.write(topic, ts, data)

        scan = _Scan(on_topic, on_message)
        if storage_file.suffix == '.mcap':
            _scan_mcap(storage_file, scan)
        else:
            _scan_sqlite(storage_file, scan)
    return {'source': str(storage_file), 'output': str(dst), 'complete': scan.complete,
            'note': scan.note, 'messages': sum(writer.counts.values()),
            'topics': dict(writer.counts), 'skipped_topics': skipped}
