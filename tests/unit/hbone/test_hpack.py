"""The HBONE header encoder: every block decodes with a stock HPACK decoder to the same fields,
uses static indices where it can, and never touches the decoder's dynamic table."""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st

from zt.hbone._hpack import LiteralEncoder

CONNECT = [
    (b":method", b"CONNECT"),
    (b":authority", b"10.0.0.1:8080"),
    (b"forwarded", b'for="10.0.0.2:1234"'),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
]


def test_connect_round_trips_and_leaves_the_decoder_table_empty() -> None:
    decoder = hpack.Decoder()
    block = LiteralEncoder().encode(CONNECT)
    assert decoder.decode(block, raw=True) == CONNECT
    assert len(decoder.header_table.dynamic_entries) == 0
    # No Huffman: the values stand in the block as they are.
    assert b"10.0.0.1:8080" in block and b"traceparent" in block


def test_status_200_is_one_static_index_octet() -> None:
    assert LiteralEncoder().encode([(b":status", b"200")]) == bytes([0x80 | 8])


def test_never_indexed_fields_keep_their_representation() -> None:
    header = hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")
    block = LiteralEncoder().encode([header])
    assert block[0] & 0xF0 == 0x10  # RFC 7541 §6.2.3
    [decoded] = hpack.Decoder().decode(block, raw=True)
    assert isinstance(decoded, hpack.NeverIndexedHeaderTuple) and tuple(decoded) == tuple(header)


def test_a_table_size_change_is_announced_first() -> None:
    encoder = LiteralEncoder()
    encoder.header_table_size = 0
    block = encoder.encode([(b":status", b"200")])
    assert block[0] & 0xE0 == 0x20 and block[1:] == bytes([0x88])  # §6.3, then the field
    assert encoder.encode([(b":status", b"200")]) == bytes([0x88])  # announced once


@given(
    st.lists(
        st.tuples(
            st.binary(min_size=1, max_size=300).map(bytes.lower),
            st.binary(max_size=600),
        ),
        max_size=8,
    )
)
def test_any_fields_decode_to_themselves(fields: list[tuple[bytes, bytes]]) -> None:
    decoder = hpack.Decoder(max_header_list_size=1 << 20)
    assert decoder.decode(LiteralEncoder().encode(fields), raw=True) == fields
