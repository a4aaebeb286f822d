"""HPACK for HBONE's few, short header blocks: static indices and plain literals, nothing else.

An HBONE header block is a CONNECT (`:method`, `:authority` and up to three context headers) or a
status. hpack's general encoder searches the dynamic table, Huffman-codes every literal and logs
each step; measured here, encoding and decoding those blocks cost about a third of the sans-IO
core's time per tunnel. This encoder writes each field as RFC 7541 allows without any state:

- §6.1 "Indexed Header Field Representation" when the whole field is in the static table
  (`:status 200` is; `:method CONNECT` is a literal with the static name `:method`);
- §6.2.2 "Literal Header Field without Indexing" otherwise, with the static table's index for
  the name when it has one, and the value's octets as they are (H = 0: no Huffman coding);
- §6.2.3 "Literal Header Field Never Indexed" for a field passed as `NeverIndexedHeaderTuple`
  (none of zt's own blocks today; h2's normalisation, which would mark some, is off).

Nothing enters the dynamic table, so the peer's decoder does no table work and no Huffman decoding
either; a table size change (§6.3) is still announced first, as §4.2 requires.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Encoder, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

# RFC 7541 Appendix A, 1-based.
_STATIC = HeaderTable.STATIC_TABLE
_FULL: dict[tuple[bytes, bytes], int] = {}
_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(_STATIC, start=1):
    _FULL.setdefault((_name, _value), _index)
    _NAME.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1: an integer in a `prefix_bits` prefix, the high bits of the first octet
    being `flags`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(octets: bytes) -> bytes:
    """RFC 7541 §5.2: H = 0, the length, the octets."""
    return _integer(len(octets), 7, 0x00) + octets


class LiteralEncoder(Encoder):
    """h2's header encoder for HBONE (see the module docstring)."""

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:  # type: ignore[override]
        block = bytearray()
        if self.header_table.resized:
            block += self._encode_table_size_change()
            self.header_table.resized = False
        for header in headers:
            name, value = bytes(header[0]), bytes(header[1])
            index = _FULL.get((name, value))
            if index is not None:
                block += _integer(index, 7, 0x80)  # §6.1
                continue
            flags = 0x10 if isinstance(header, NeverIndexedHeaderTuple) else 0x00
            name_index = _NAME.get(name, 0)
            block += _integer(name_index, 4, flags)  # §6.2.2 / §6.2.3
            if not name_index:
                block += _string(name)
            block += _string(value)
        return bytes(block)
