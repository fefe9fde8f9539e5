"""An ONNX file's ``metadata_props``, read from its protobuf fields without loading its
weights: exported models need neither PyTorch nor the ``onnx`` package to be opened."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read without loading its weights.

    An ONNX file is a protobuf ``ModelProto``; its field 14 holds ``{key: 1, value: 2}``
    string pairs. The other fields (the graph and its weights) are skipped by length.
    """
    found: dict[str, str] = {}
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while fh.tell() < size:
            field, wire = divmod(_varint(fh), 8)
            if wire == 2:
                length = _varint(fh)
                if field == 14:
                    entry = _fields(fh.read(length))
                    found[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                else:
                    fh.seek(length, os.SEEK_CUR)
            elif wire in (1, 5):
                fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 0:
                _varint(fh)
            else:
                raise ValueError(f"not an ONNX model (protobuf wire type {wire})")
    return found


def _varint(fh: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("not an ONNX model (the file ends inside a field)")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return value


def _fields(data: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a small protobuf message (a metadata entry)."""
    fh, out = io.BytesIO(data), {}
    while fh.tell() < len(data):
        field, wire = divmod(_varint(fh), 8)
        if wire != 2:
            raise ValueError("not an ONNX model (a metadata entry that is not a string)")
        out[field] = fh.read(_varint(fh))
    return out
