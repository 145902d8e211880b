"""Full-precision reading of 16-bit colour PNGs, which Pillow decodes at 8 bits.

The format (PNG specification, section 9): zlib-compressed scanlines, each led by a filter byte
(0 none, 1 sub, 2 up, 3 average, 4 Paeth) that predicts a byte from its left, upper and upper-left
neighbours ``bpp`` bytes away. Only what Pillow cannot do is handled: bit depth 16, colour type 2
(RGB) or 6 (RGBA), no interlacing.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type → samples per pixel


def _chunks(data):
    position = len(SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        yield kind, data[position + 8 : position + 8 + length]
        position += 12 + length


def _paeth(left, up, up_left):
    estimate = left + up - up_left
    distance_left, distance_up, distance_diagonal = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
    if distance_left <= distance_up and distance_left <= distance_diagonal:
        return left
    return up if distance_up <= distance_diagonal else up_left


def _unfilter_sequential(kind, row, previous, bpp):
    """Average and Paeth rows: each byte needs the already decoded byte to its left."""
    out, previous = bytearray(row.tobytes()), previous.tobytes()  # Python ints: no uint8 overflow
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 3:
            out[i] = (out[i] + (left + up) // 2) & 0xFF
        else:
            up_left = previous[i - bpp] if i >= bpp else 0
            out[i] = (out[i] + _paeth(left, up, up_left)) & 0xFF
    return np.frombuffer(bytes(out), np.uint8)


def read_png16(data: bytes) -> np.ndarray | None:
    """uint16 H×W×C of a 16-bit RGB(A) PNG given as bytes; None for any other PNG."""
    if not data.startswith(SIGNATURE):
        return None
    header, compressed = None, []
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
    if header is None:
        raise ValueError("PNG without IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or colour not in CHANNELS or interlace:
        return None
    bpp = 2 * CHANNELS[colour]
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(compressed)), np.uint8)
    if raw.size != height * (stride + 1):
        raise ValueError(f"PNG data holds {raw.size} bytes, expected {height * (stride + 1)}")
    rows = raw.reshape(height, stride + 1)
    decoded = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, row = rows[y, 0], rows[y, 1:]
        if kind == 0:
            decoded[y] = row
        elif kind == 1:
            decoded[y] = np.cumsum(row.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            decoded[y] = row + previous
        elif kind in (3, 4):
            decoded[y] = _unfilter_sequential(kind, row, previous, bpp)
        else:
            raise ValueError(f"PNG row {y} has unknown filter type {kind}")
        previous = decoded[y]
    return decoded.view(">u2").reshape(height, width, CHANNELS[colour]).astype(np.uint16)
