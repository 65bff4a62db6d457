"""Databento MBO files (DBN, plain or zstd) to typed records, and records to stored rows.

:class:`MboReader` reads a ``.dbn`` or ``.dbn.zst`` file, or a binary stream, with the
``databento_dbn`` decoder (records kept as the file has them: no version upgrade) and yields
per record either an :class:`MboRecord` (every field of the record, the exact price, the
instrument's symbol and the record's exact bytes) or an :class:`MboReject` (a record that
cannot become an event: unknown action or side, an add without side or price, a record type
that is not MBO). What makes the whole input unreadable raises :class:`DbnError` (an
:class:`~ledger.errors.InputError`) naming the input and the record number: a file of
another schema, a truncated file, corrupt zstd data, a malformed record, top-of-book records.

:func:`stored_rows` turns records into :class:`StoredRow` s, the layout of the event log
(``seq, kind, order_id, side, price, size, ts``, then ``flags, ts_event, ts_recv, sequence,
channel, raw``), keyed by a :class:`Sequencer` ``seq`` (``docs/venues/databento.md``).

    >>> rows = list(stored_rows(MboReader("esh4.mbo.dbn.zst")))        # doctest: +SKIP

Record numbers count every record of the input from 1 (the metadata header is not one).
Prices are integers in units of 1e-9 in the file; they become exact numbers from the
integer alone, never through float.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Final, NamedTuple

import databento_dbn

from ledger.domain.events import Number
from ledger.errors import InputError
from ledger.storage.copy import TIME_TEXT, TimestampText, venue_event_line

__all__ = [
    "KINDS",
    "PRICE_SCALE",
    "CopyLines",
    "DbnError",
    "MboReader",
    "MboRecord",
    "MboReject",
    "Sequencer",
    "StoredRow",
    "keyed_rows",
    "price_of",
    "stored_row",
    "stored_rows",
    "stream_key",
]

#: A DBN price is an integer number of 1e-9 units.
PRICE_SCALE = 9
_UNITS: Final = 1_000_000_000
UNDEF_PRICE = 2**63 - 1
UNDEF_TIMESTAMP = 2**64 - 1

#: The Databento flags ledger refuses: records that are not individual orders.
F_TOB = 1 << 6
F_MBP = 1 << 4

#: Databento's action letter -> the event log's ``kind``.
KINDS = {"A": "add", "C": "cancel", "M": "modify", "R": "clear", "T": "trade", "F": "fill", "N": "none"}
_ACTIONS = {ord(letter): letter for letter in KINDS}
#: Databento's side letter -> ledger's side (``A`` ask is a sell; ``N`` none).
_SIDES = {ord("B"): "B", ord("A"): "S", ord("N"): None}
_SIDE_LETTERS = {ord("B"): "B", ord("A"): "A", ord("N"): "N"}
# An action's kind and a side as the event log stores them, by their bytes (None for side N:
# no side).
_KIND_OF_BYTE = {ord(letter): kind for letter, kind in KINDS.items()}
_SIDE_TEXT: dict[int, str | None] = {ord("B"): "B", ord("A"): "S", ord("N"): None}
_NOT_A_SIDE = "not a side"  # what _SIDE_TEXT.get gives for any other byte (compared by identity)
# The actions whose order id is an order's even when it is 0 (add, cancel, modify).
_ORDER_ACTIONS = frozenset(b"ACM")

_RTYPE_MBO = 0xA0
_RTYPE_ERROR = 0x15
_RTYPE_SYMBOL_MAPPING = 0x16
_RTYPE_SYSTEM = 0x17
# The MBO record (56 bytes, little-endian, no padding): length, rtype, publisher_id,
# instrument_id, ts_event | order_id, price, size, flags, channel_id, action, side, ts_recv,
# ts_in_delta, sequence. A file written with ts_out has 8 more bytes after it. Read: all but
# length and rtype (looked at in the bytes first) and ts_in_delta (not kept apart from raw).
_MBO = struct.Struct("<2xHIQQqIBBBBQ4xI")
_MBO_SIZE = _MBO.size

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Records as the file has them: no upgrade to the newest DBN version (the stubs type it int).
_AS_IS: Any = databento_dbn.VersionUpgradePolicy.AS_IS
_CHUNK = 1 << 18
_PRICES_KEPT = 1 << 16


class DbnError(InputError):
    """A DBN input that cannot be read (the message names it and the record); ``source`` and
    ``record_no`` (None: not at a record) say where."""

    def __init__(self, source: str, record_no: int | None, reason: str) -> None:
        where = f"{source}: " if record_no is None else f"{source}: record {record_no}: "
        super().__init__(where + reason)
        self.source = source
        self.record_no = record_no


class MboRecord(NamedTuple):
    """One MBO record as the file has it, with what ledger adds: the exact price and the symbol."""

    record_no: int
    instrument_id: int
    #: The raw symbol the metadata (or a symbol mapping record) gives; else the instrument id.
    symbol: str
    dataset: str
    #: ``A`` add, ``C`` cancel, ``M`` modify, ``R`` clear, ``T`` trade, ``F`` fill, ``N`` none.
    action: str
    #: ``B`` bid, ``A`` ask, ``N`` none.
    side: str
    #: The exact price (an int when whole, else a Decimal); None when undefined.
    price: Number | None
    #: The price as the file has it, in units of 1e-9 (``UNDEF_PRICE`` when undefined).
    price_units: int
    size: int
    order_id: str
    flags: int
    ts_recv: int
    ts_event: int
    sequence: int
    channel_id: int
    publisher_id: int
    #: The record's bytes, exactly as in the (decompressed) file.
    raw: bytes


class CopyLines(NamedTuple):
    """One chunk of records as the ingest stores them (:meth:`MboReader.copy_lines`)."""

    #: stream key (symbol, publisher id) -> ``(seq, record_no, line)`` in file order
    lines: dict[tuple[str, int], list[tuple[int, int, bytes]]]
    rejects: list[MboReject]


class MboReject(NamedTuple):
    """A record that cannot become an event: where it is, what it is, and why."""

    record_no: int
    instrument_id: int
    symbol: str
    reason: str
    raw: bytes


class StoredRow(NamedTuple):
    """One record in the event log's layout (``docs/venues/databento.md``)."""

    seq: int
    #: ``add``, ``cancel``, ``modify``, ``clear``, ``trade``, ``fill`` or ``none`` (:data:`KINDS`).
    kind: str
    #: The order id (text); None for a record without one (0 on a clear, trade, fill or none).
    order_id: str | None
    #: ``B``, ``S`` or None.
    side: str | None
    price: Number | None
    size: int
    #: ts_recv as a UTC datetime (microseconds: what timestamptz keeps).
    ts: datetime
    flags: int
    #: Nanoseconds since the epoch, exact (None when undefined).
    ts_event: int | None
    ts_recv: int
    sequence: int
    channel: int
    #: The record's bytes as lower-case hex (the ``raw`` column is text).
    raw: str


def price_of(units: int) -> Number:
    """The exact price of ``units`` of 1e-9: an int when whole, else the shortest Decimal.
    Built from the integer's digits, never through float.

    >>> price_of(4799250000000), price_of(4799000000000), price_of(-1500000)
    (Decimal('4799.25'), 4799, Decimal('-0.0015'))
    """
    whole, fraction = divmod(abs(units), _UNITS)
    if not fraction:
        return -whole if units < 0 else whole
    digits = f"{fraction:09d}".rstrip("0")
    return Decimal(f"{'-' if units < 0 else ''}{whole}.{digits}")


class _ZstdFrames:
    """Walks the frame and block headers of zstd data as it arrives (nothing is decompressed)
    to tell whether the data ends where a frame ends: the decoder says nothing of a truncated
    frame, it just has no more records. RFC 8878, sections 3.1.1-3.1.2."""

    __slots__ = ("_buf", "_checksum", "_frames", "_skip", "_state", "consumed")

    _MAGIC, _HEADER, _BLOCK = 0, 1, 2

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 0
        self._state = self._MAGIC
        self._checksum = False
        self._frames = 0
        #: Bytes walked so far.
        self.consumed = 0

    def feed(self, data: bytes) -> None:
        """Walk ``data``; ValueError where it is not zstd."""
        buf = self._buf + data if self._buf else data
        i, n = 0, len(buf)
        state = self._state
        while True:
            if self._skip:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
                if self._skip:
                    break
            elif state == self._MAGIC:
                if n - i < 4:
                    break
                magic = buf[i : i + 4]
                if magic == _ZSTD_MAGIC:
                    i += 4
                    state = self._HEADER
                    self._frames += 1
                elif magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # a skippable frame
                    if n - i < 8:
                        break
                    self._skip = int.from_bytes(buf[i + 4 : i + 8], "little")
                    i += 8
                else:
                    raise ValueError(f"no zstd frame starts at byte {self.consumed + i}")
            elif state == self._HEADER:
                if n - i < 1:
                    break
                descriptor = buf[i]
                if descriptor & 0x08:
                    raise ValueError(f"a zstd frame header with its reserved bit set at byte {self.consumed + i}")
                single_segment = descriptor >> 5 & 1
                size = (
                    1
                    + (0 if single_segment else 1)
                    + (0, 1, 2, 4)[descriptor & 3]
                    + (single_segment, 2, 4, 8)[descriptor >> 6]
                )
                if n - i < size:
                    break
                self._checksum = bool(descriptor & 0x04)
                i += size
                state = self._BLOCK
            else:
                if n - i < 3:
                    break
                header = int.from_bytes(buf[i : i + 3], "little")
                kind, size = header >> 1 & 3, header >> 3
                if kind == 3 or (kind != 1 and size > 128 * 1024):
                    raise ValueError(f"a malformed zstd block header at byte {self.consumed + i}")
                i += 3
                self._skip = 1 if kind == 1 else size
                if header & 1:  # the frame's last block
                    self._skip += 4 if self._checksum else 0
                    state = self._MAGIC
        self._state = state
        self.consumed += i
        self._buf = buf[i:]

    @property
    def complete(self) -> bool:
        """True when the data walked so far ends where a frame ends."""
        return self._frames > 0 and self._state == self._MAGIC and not self._skip and not self._buf


class _Symbols:
    """Instrument id -> symbol, from the metadata's symbology mappings (the raw symbol of the
    interval that holds the record's date) and from symbol mapping records (live streams).
    Without a mapping the symbol is the instrument id."""

    __slots__ = ("_fixed", "_intervals")

    def __init__(self, metadata: Any) -> None:
        self._fixed: dict[int, str] = {}
        self._intervals: dict[int, list[tuple[int, int, str]]] = {}
        stype_in = str(metadata.stype_in) if metadata.stype_in is not None else None
        stype_out = str(metadata.stype_out) if metadata.stype_out is not None else None
        by_id: dict[int, list[tuple[int, int, str]]] = {}
        for key, intervals in (metadata.mappings or {}).items():
            for interval in intervals:
                if stype_in == "raw_symbol" and stype_out == "instrument_id":
                    id_text, symbol = interval["symbol"], key
                elif stype_in == "instrument_id" and stype_out == "raw_symbol":
                    id_text, symbol = key, interval["symbol"]
                else:  # parent or continuous symbols name more than one instrument over time
                    continue
                if not id_text or not id_text.isdigit() or not symbol:
                    continue
                by_id.setdefault(int(id_text), []).append(
                    (_day(interval["start_date"]), _day(interval["end_date"]), symbol)
                )
        for instrument_id, found in by_id.items():
            if len({symbol for _, _, symbol in found}) == 1:
                self._fixed[instrument_id] = found[0][2]
            else:
                self._intervals[instrument_id] = sorted(found)

    def get(self, instrument_id: int, ts_recv: int) -> str:
        found = self._fixed.get(instrument_id)
        if found is not None:
            return found
        intervals = self._intervals.get(instrument_id)
        if intervals:
            day = ts_recv // 86_400_000_000_000
            for start, end, symbol in intervals:
                if start <= day < end:
                    return symbol
        return str(instrument_id)

    def fixed(self, instrument_id: int) -> str | None:
        """The symbol when it does not depend on the date (the hot path's cache)."""
        return self._fixed.get(instrument_id) if instrument_id not in self._intervals else None

    def learn(self, instrument_id: int, symbol: str) -> None:
        """A symbol mapping record: from now on ``instrument_id`` is ``symbol``."""
        self._intervals.pop(instrument_id, None)
        self._fixed[instrument_id] = symbol


def _day(value: Any) -> int:
    """Days since the epoch of a mapping's date (a ``datetime.date`` or ISO text)."""
    if isinstance(value, str):
        value = date.fromisoformat(value)
    return int((value - date(1970, 1, 1)).days)


class MboReader:
    """The MBO records of one DBN input (see the module docstring).

    ``source``: a path (``.dbn`` or ``.dbn.zst``; the compression is read from the first
    bytes, not the name) or a binary file object (``name`` names it in messages). Iterate it
    for :class:`MboRecord` and :class:`MboReject` items in file order, or call
    :meth:`batches` for lists of them. With ``strict``, a reject raises :class:`DbnError`
    instead. :attr:`metadata` is the file's metadata once reading has begun."""

    def __init__(
        self,
        source: str | Path | BinaryIO,
        *,
        name: str | None = None,
        strict: bool = False,
        chunk_size: int = _CHUNK,
    ) -> None:
        self._source = source
        if name is None:
            name = str(source) if isinstance(source, str | Path) else str(getattr(source, "name", "<stream>"))
        self.name = name
        self.strict = strict
        self.chunk_size = chunk_size
        self.metadata: Any = None
        self.dataset = ""
        self.compressed = False
        #: Records read so far (MBO or not).
        self.records = 0
        self._symbols: _Symbols | None = None
        self._price_text: dict[int, str] = {}
        self._timestamp = TimestampText()

    def __iter__(self) -> Iterator[MboRecord | MboReject]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[MboRecord | MboReject]]:
        """Lists of records in file order, one per chunk of input."""
        return self._batches(self._records)

    def copy_lines(self, sequencer: Sequencer) -> Iterator[CopyLines]:
        """What the event log's COPY needs of the records, one :class:`CopyLines` per chunk
        of input: per stream key (symbol, publisher id) its records as ``(seq, record_no,
        line)`` in file order, the seq from ``sequencer`` and the line the record's COPY
        text; and the rejects. The same records, checks, keys and rejects as
        :meth:`batches` and :func:`keyed_rows`, without making an :class:`MboRecord` of each
        (the ingest's path)."""
        return self._batches(lambda decoded: self._lines(decoded, sequencer))

    def check(self) -> int:
        """Read the whole input without making anything of its records: the errors of
        :meth:`batches` (a zstd checksum among them, found only at a frame's end), or the
        number of records."""

        def count(decoded: list[Any]) -> None:
            self.records += len(decoded)

        for _ in self._batches(count):
            pass
        return self.records

    def _batches(self, convert: Callable[[list[Any]], Any]) -> Iterator[Any]:
        if isinstance(self._source, str | Path):
            try:
                handle: BinaryIO = open(self._source, "rb")  # noqa: SIM115 (closed below)
            except OSError as error:
                raise DbnError(self.name, None, f"cannot open: {error.strerror or error}") from error
            with handle:
                yield from self._read(handle, convert)
        else:
            yield from self._read(self._source, convert)

    # -- reading -------------------------------------------------------------------------

    def _chunks(self, handle: BinaryIO) -> Iterator[bytes]:
        while True:
            try:
                chunk = handle.read(self.chunk_size)
            except OSError as error:
                raise DbnError(self.name, None, f"cannot read: {error.strerror or error}") from error
            if not chunk:
                return
            yield bytes(chunk)

    def _read(self, handle: BinaryIO, convert: Callable[[list[Any]], Any]) -> Iterator[Any]:
        chunks = self._chunks(handle)
        head = b""
        for chunk in chunks:  # enough bytes to tell what the input is
            head += chunk
            if len(head) >= 4:
                break
        if not head:
            raise DbnError(self.name, None, "empty input: not a DBN file")
        if head[:4] == _ZSTD_MAGIC or (head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
            self.compressed = True
        elif head[:3] != b"DBN":
            raise DbnError(self.name, None, f"not a DBN file (starts with bytes {head[:8].hex(' ')})")
        frames = _ZstdFrames() if self.compressed else None
        decoder = self._decoder(has_metadata=True)
        pending = b""  # undecoded bytes of plain DBN (a record split between chunks)
        first = True
        for chunk in _prepend(head, chunks):
            if frames is not None:
                try:
                    frames.feed(chunk)
                except ValueError as error:
                    reason = f"corrupt zstd data after record {self.records}: {error}"
                    raise DbnError(self.name, None, reason) from error
            try:
                decoded = decoder.write_and_decode(chunk)
            except BaseException as error:  # a malformed record can make the decoder panic
                if isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                raise self._decode_error(error, None if frames is not None else pending + chunk) from error
            if first and decoded:
                first = False
                self._start(decoded[0])
                decoded = decoded[1:]
            if frames is None:
                pending = bytes(decoder.buffer())
            if decoded:
                yield convert(decoded)
        self._finish(decoder, frames, first)

    def _decoder(self, *, has_metadata: bool) -> Any:
        kwargs: dict[str, Any] = {"upgrade_policy": _AS_IS}
        if self.compressed:
            kwargs["compression"] = databento_dbn.Compression.ZSTD
        if not has_metadata:
            kwargs.update(has_metadata=False, input_version=self.metadata.version, ts_out=bool(self.metadata.ts_out))
        return databento_dbn.DBNDecoder(**kwargs)

    def _start(self, metadata: Any) -> None:
        if not isinstance(metadata, databento_dbn.Metadata):
            raise DbnError(self.name, None, "no DBN metadata at the start")
        schema = metadata.schema
        if schema is None or str(schema) != "mbo":
            what = "mixed schemas" if schema is None else f"schema {schema}"
            raise DbnError(self.name, None, f"the file holds {what}, not MBO (mbo): ledger reads only MBO files")
        self.metadata = metadata
        self.dataset = str(metadata.dataset)
        self._symbols = _Symbols(metadata)

    def _finish(self, decoder: Any, frames: _ZstdFrames | None, no_metadata: bool) -> None:
        left = len(decoder.buffer())
        if frames is not None and not frames.complete:
            raise DbnError(
                self.name,
                None,
                f"truncated: the zstd data ends inside a frame, after record {self.records} "
                f"({frames.consumed} compressed bytes read)",
            )
        if no_metadata:
            raise DbnError(self.name, None, "truncated: the input ends inside the DBN metadata header")
        if left:
            reason = f"truncated: the input ends inside this record ({left} bytes of it)"
            raise DbnError(self.name, self.records + 1, reason)

    def _decode_error(self, error: BaseException, data: bytes | None) -> DbnError:
        """The decoder refused the data: name the record where it can be found (plain DBN:
        the records of the failing chunk are decoded one at a time to find it)."""
        message = _first_line(error)
        if data is None:
            return DbnError(self.name, None, f"corrupt zstd data after record {self.records}: {message}")
        offset, number = 0, self.records
        if self.metadata is None:  # the metadata and the first records came in one chunk
            offset = 8 + int.from_bytes(data[4:8], "little") if len(data) >= 8 else len(data) + 1
            try:
                metadata = databento_dbn.Metadata.decode(data[:offset], upgrade_policy=_AS_IS)
            except BaseException as found:
                if isinstance(found, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                return DbnError(self.name, None, f"the DBN metadata header cannot be read: {message}")
            self._start(metadata)
        while offset < len(data):
            number += 1
            length = data[offset] * 4
            if length < 16:
                return DbnError(self.name, number, f"malformed record: its length byte says {length} bytes")
            piece = data[offset : offset + length]
            if len(piece) < length:
                break
            try:
                self._decoder(has_metadata=False).write_and_decode(piece)
            except BaseException as found:
                if isinstance(found, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                return DbnError(self.name, number, f"malformed record: {_first_line(found)}")
            offset += length
        return DbnError(self.name, self.records + 1, f"the decoder refused the data from here: {message}")

    def _records(self, decoded: Iterable[Any]) -> list[MboRecord | MboReject]:
        """The hot loop: one MboRecord (or reject) per decoded record."""
        out: list[MboRecord | MboReject] = []
        append = out.append
        unpack = _MBO.unpack_from
        new = tuple.__new__
        symbols = self._symbols
        assert symbols is not None
        fixed = symbols.fixed
        dataset = self.dataset
        actions = _ACTIONS
        sides = _SIDE_LETTERS
        prices: dict[int, Number] = {}
        known: dict[int, str | None] = {}
        number = self.records
        try:
            for record in decoded:
                number += 1
                raw = bytes(record)
                if len(raw) < _MBO_SIZE or raw[1] != _RTYPE_MBO:
                    item = self._other(record, raw, number)
                    if item is not None:
                        append(item)
                    known.clear()  # a symbol mapping record may have named an instrument anew
                    continue
                (publisher_id, instrument_id, ts_event, order_id, price_units, size, flags, channel_id,
                 action_byte, side_byte, ts_recv, sequence) = unpack(raw)  # fmt: skip
                symbol = known.get(instrument_id)
                if symbol is None:
                    symbol = known[instrument_id] = fixed(instrument_id)
                    if symbol is None:
                        symbol = symbols.get(instrument_id, ts_recv)
                action = actions.get(action_byte)
                side = sides.get(side_byte)
                if action is None or side is None or flags & (F_TOB | F_MBP) or ts_recv >= 2**63:
                    append(self._reject(number, instrument_id, symbol, raw, action_byte, side_byte, flags, ts_recv))
                    continue
                if price_units == UNDEF_PRICE:
                    price: Number | None = None
                    if action == "A" or action == "M":
                        append(self._refuse(number, instrument_id, symbol, raw, f"{KINDS[action]} without a price"))
                        continue
                else:
                    price = prices.get(price_units)
                    if price is None:
                        price = prices[price_units] = price_of(price_units)
                if side == "N" and action == "A":
                    append(self._refuse(number, instrument_id, symbol, raw, "an add without a side"))
                    continue
                fields = (number, instrument_id, symbol, dataset, action, side, price, price_units, size,
                          str(order_id), flags, ts_recv, ts_event, sequence, channel_id, publisher_id, raw)  # fmt: skip
                append(new(MboRecord, fields))
        finally:
            self.records = number
        return out

    def _lines(self, decoded: Iterable[Any], sequencer: Sequencer) -> CopyLines:
        """The ingest's hot loop (:meth:`copy_lines`): the checks of :meth:`_records`, then
        the stream key, the seq (:class:`Sequencer`'s rule, inlined) and the COPY line (the
        columns of ``EVENT_COPY_COLUMNS`` from ``seq``, then ``VENUE_FIELDS``; ``ts`` as
        ``YYYY-MM-DD HH:MM:SS.ffffff+00``, made once per second, the price text once per
        price; no value needs escaping: numbers, fixed words, hex)."""
        groups: dict[tuple[str, int], list[tuple[int, int, bytes]]] = {}
        rejects: list[MboReject] = []
        unpack = _MBO.unpack_from
        symbols = self._symbols
        assert symbols is not None
        actions = _ACTIONS
        kinds = _KIND_OF_BYTE
        sides = _SIDE_TEXT
        prices = self._price_text
        second_text, time_text = self._timestamp.second, TIME_TEXT
        not_orders, undefined_time = F_TOB | F_MBP, UNDEF_TIMESTAMP
        last_second, day = -1, ""
        copy_line = venue_event_line
        lasts = sequencer._last
        # instrument id -> (publisher id, stream key, its rows, its last seq in a cell): one
        # look-up per record (the symbol is looked up once per chunk, as _records does)
        streams: dict[int, tuple[int, tuple[str, int], list[tuple[int, int, bytes]], list[int]]] = {}
        cells: dict[tuple[str, int], list[int]] = {}
        number = self.records
        last_us, ts = -1, ""
        try:
            for record in decoded:
                number += 1
                raw = bytes(record)
                if len(raw) < _MBO_SIZE or raw[1] != _RTYPE_MBO:
                    item = self._other(record, raw, number)
                    if item is not None:
                        rejects.append(item)
                    streams.clear()  # a symbol mapping record may have named an instrument anew
                    continue
                (publisher_id, instrument_id, ts_event, order_id, price_units, size, flags, channel_id,
                 action_byte, side_byte, ts_recv, sequence) = unpack(raw)  # fmt: skip
                stream = streams.get(instrument_id)
                if stream is None or stream[0] != publisher_id:
                    symbol = symbols.fixed(instrument_id) or symbols.get(instrument_id, ts_recv)
                    key = (symbol, publisher_id)
                    cell = cells.get(key)
                    if cell is None:
                        last = lasts.get(key)
                        cell = cells[key] = [-1 if last is None else last]
                    stream = streams[instrument_id] = (publisher_id, key, groups.setdefault(key, []), cell)
                side = sides.get(side_byte, _NOT_A_SIDE)
                if action_byte not in actions or side is _NOT_A_SIDE or flags & not_orders or ts_recv >= 2**63:
                    symbol = stream[1][0]
                    rejects.append(
                        self._reject(number, instrument_id, symbol, raw, action_byte, side_byte, flags, ts_recv)
                    )
                    continue
                price = prices.get(price_units)
                if price is None:
                    if price_units == UNDEF_PRICE:
                        if action_byte == 65 or action_byte == 77:  # A, M
                            reason = f"{KINDS[actions[action_byte]]} without a price"
                            rejects.append(self._refuse(number, instrument_id, stream[1][0], raw, reason))
                            continue
                        price = None  # (not kept: None is the cache's miss)
                    else:
                        if len(prices) >= _PRICES_KEPT:  # bounded, like the seconds
                            prices.clear()
                        price = prices[price_units] = str(price_of(price_units))
                if side_byte == 78 and action_byte == 65:  # N, A
                    rejects.append(self._refuse(number, instrument_id, stream[1][0], raw, "an add without a side"))
                    continue
                us = ts_recv // 1000
                if us != last_us:  # TimestampText's text, the second's part kept while it lasts
                    last_us = us
                    second = us // 1_000_000
                    if second != last_second:
                        last_second, day = second, second_text(second)
                    ts = time_text % (day, us - second * 1_000_000)
                cell = stream[3]
                seq = ts_recv
                if seq <= cell[0]:
                    seq = cell[0] + 1
                cell[0] = seq
                order = None if order_id == 0 and action_byte not in _ORDER_ACTIONS else order_id
                event_ts = None if ts_event == undefined_time else ts_event
                # seq is ts_recv but when two records share it: its text made once for both
                seq_text = str(seq)
                line = copy_line(seq_text, kinds[action_byte], order, side, price, size, ts, raw.hex(), flags,
                                 event_ts, seq_text if seq == ts_recv else ts_recv, sequence, channel_id)  # fmt: skip
                stream[2].append((seq, number, line))
        finally:
            self.records = number
            for key, cell in cells.items():
                if cell[0] >= 0:
                    lasts[key] = cell[0]
        return CopyLines({key: rows for key, rows in groups.items() if rows}, rejects)

    def _reject(
        self, number: int, instrument_id: int, symbol: str, raw: bytes, action: int, side: int, flags: int, ts: int
    ) -> MboReject:
        if flags & (F_TOB | F_MBP):
            what = "F_TOB (top of book)" if flags & F_TOB else "F_MBP (a price level)"
            raise DbnError(
                self.name,
                number,
                f"flag {what}: this dataset's MBO records are not individual orders, and ledger builds "
                "order books only from individual orders",
            )
        if _ACTIONS.get(action) is None:
            reason = f"unknown action {_byte(action)} (known: A C M R T F N)"
        elif _SIDE_LETTERS.get(side) is None:
            reason = f"unknown side {_byte(side)} (known: B A N)"
        else:
            reason = f"ts_recv {ts} is undefined or beyond 2262"
        return self._refuse(number, instrument_id, symbol, raw, reason)

    def _refuse(self, number: int, instrument_id: int, symbol: str, raw: bytes, reason: str) -> MboReject:
        if self.strict:
            raise DbnError(self.name, number, reason)
        return MboReject(number, instrument_id, symbol, reason, raw)

    def _other(self, record: Any, raw: bytes, number: int) -> MboReject | None:
        """A record that is not MBO: symbol mappings are learned, system records (heartbeats)
        skipped, anything else is a reject."""
        rtype = raw[1] if len(raw) > 1 else -1
        instrument_id = int.from_bytes(raw[4:8], "little") if len(raw) >= 8 else 0
        assert self._symbols is not None
        if rtype == _RTYPE_SYMBOL_MAPPING:
            symbol = str(getattr(record, "stype_out_symbol", "") or "")
            if symbol:
                self._symbols.learn(instrument_id, symbol)
            return None
        if rtype == _RTYPE_SYSTEM:
            return None
        symbol = self._symbols.get(instrument_id, 0)
        if rtype == _RTYPE_ERROR:
            reason = f"an error record from the gateway: {getattr(record, 'err', '')}"
        else:
            reason = f"a {type(record).__name__} record (rtype {rtype:#04x}), not MBO"
        return self._refuse(number, instrument_id, symbol, raw, reason)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _byte(value: int) -> str:
    return repr(chr(value)) if 0x20 <= value < 0x7F else f"0x{value:02x}"


# -- stored rows ---------------------------------------------------------------------------

_SEQ_MAX = 2**63 - 1


class Sequencer:
    """The event key of each record of a stream (``docs/venues/databento.md``): its ts_recv
    in nanoseconds; a record whose key would not be above the stream's previous one takes
    the previous + 1 (the records of one exchange event or one snapshot, which share their
    ts_recv, take the nanoseconds after it; a ts_recv that goes back). So seqs are unique
    and increasing in file order per stream, and the same file gives the same seqs every
    time. Fits int64 until the year 2262.

        >>> s = Sequencer()
        >>> [s("ES", t) for t in (1703462400000000000, 1703462400000000000, 1703462400000000001, 1703462400000000700)]
        [1703462400000000000, 1703462400000000001, 1703462400000000002, 1703462400000000700]
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[Hashable, int] = {}

    def __call__(self, stream: Hashable, ts_recv: int) -> int:
        seq = ts_recv
        last = self._last.get(stream)
        if last is not None and seq <= last:
            seq = last + 1
        if seq > _SEQ_MAX:
            raise ValueError(f"ts_recv {ts_recv} is beyond what a seq can hold (the year 2262)")
        self._last[stream] = seq
        return seq

    def last(self, stream: Hashable) -> int | None:
        """The stream's last seq (None: none yet)."""
        return self._last.get(stream)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stored_row(record: MboRecord, seq: int) -> StoredRow:
    """The event log's row for ``record`` at ``seq``."""
    action = record.action
    order_id: str | None = record.order_id
    if order_id == "0" and action not in "ACM":
        order_id = None
    ts_event = None if record.ts_event == UNDEF_TIMESTAMP else record.ts_event
    return StoredRow(
        seq,
        KINDS[action],
        order_id,
        _SIDES[ord(record.side)],
        record.price,
        record.size,
        _EPOCH + timedelta(microseconds=record.ts_recv // 1000),
        record.flags,
        ts_event,
        record.ts_recv,
        record.sequence,
        record.channel_id,
        record.raw.hex(),
    )


def stored_rows(
    items: Iterable[MboRecord | MboReject],
    sequencer: Sequencer | None = None,
    stream: Callable[[MboRecord], Hashable] | None = None,
) -> Iterator[StoredRow | MboReject]:
    """Stored rows of ``items`` in order (rejects passed through), keyed by ``sequencer``
    per ``stream(record)`` (default: symbol and publisher, see ``docs/venues/databento.md``).
    Rows of different streams come interleaved as in the file. The same as
    :func:`stored_row` with :class:`Sequencer`, inlined: this runs once per record."""
    for item in keyed_rows(items, sequencer, stream):
        yield item if item.__class__ is MboReject else item[2]  # type: ignore[misc]


def keyed_rows(
    items: Iterable[MboRecord | MboReject],
    sequencer: Sequencer | None = None,
    stream: Callable[[MboRecord], Hashable] | None = None,
) -> Iterator[tuple[Hashable, int, StoredRow] | MboReject]:
    """:func:`stored_rows`, each row with its stream key and record number:
    ``(stream key, record_no, row)``; rejects passed through."""
    sequencer = sequencer or Sequencer()
    lasts = sequencer._last
    sides = _SIDES
    kinds = KINDS
    epoch = _EPOCH
    last_us = -1
    ts: datetime = epoch
    new = tuple.__new__
    for item in items:
        if isinstance(item, MboReject):
            yield item
            continue
        action = item[4]
        ts_recv = item[11]
        us = ts_recv // 1000
        if us != last_us:
            last_us, ts = us, epoch + timedelta(microseconds=us)
        key = (item[2], item[15]) if stream is None else stream(item)
        seq = ts_recv
        last = lasts.get(key)
        if last is not None and seq <= last:
            seq = last + 1
        if seq > _SEQ_MAX:
            raise ValueError(f"ts_recv {ts_recv} is beyond what a seq can hold (the year 2262)")
        lasts[key] = seq
        order_id: str | None = item[9]
        if order_id == "0" and action not in "ACM":
            order_id = None
        ts_event: int | None = item[12]
        if ts_event == UNDEF_TIMESTAMP:
            ts_event = None
        fields = (seq, kinds[action], order_id, sides[ord(item[5])], item[6], item[8], ts, item[10], ts_event,
                  ts_recv, item[13], item[14], item[16].hex())  # fmt: skip
        yield key, item[0], new(StoredRow, fields)


def stream_key(record: MboRecord) -> tuple[str, int]:
    """The default stream of a record: its symbol and publisher (a dataset's venue)."""
    return (record.symbol, record.publisher_id)
