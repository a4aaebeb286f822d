"""Decode raw HTTP/2 bytes into hyperframe frames, to assert what went on the wire."""

from __future__ import annotations

from typing import TypeVar

from hyperframe.frame import Frame

F = TypeVar("F", bound=Frame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def decode(wire: bytes) -> list[Frame]:
    """Every complete frame in `wire` (a leading client preface is skipped)."""
    view = memoryview(wire)
    if wire.startswith(PREFACE):
        view = view[len(PREFACE) :]
    frames: list[Frame] = []
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def of_type(wire: list[bytes], cls: type[F]) -> list[F]:
    return [f for chunk in wire for f in decode(chunk) if isinstance(f, cls)]
