"""Streaming AES-256-GCM: round trips at chunk boundaries; truncation, reordering and edits are
refused; keys parse from base64 or hex only."""

from __future__ import annotations

import io
import os

import pytest

from clearscan.backup import crypto
from clearscan.backup.errors import BackupDamaged, BackupKeyError

KEY = os.urandom(32)


def seal(data: bytes, key: bytes = KEY) -> bytes:
    return b"".join(crypto.encrypt(crypto.plain_chunks(io.BytesIO(data)), key))


def open_(blob: bytes, key: bytes = KEY) -> bytes:
    return b"".join(crypto.decrypt(io.BytesIO(blob), key, what="f"))


@pytest.mark.parametrize("size", [0, 1, crypto.CHUNK - 1, crypto.CHUNK, 2 * crypto.CHUNK + 5])
def test_round_trip(size: int):
    data = os.urandom(size)
    sealed = seal(data)
    assert open_(sealed) == data
    assert sealed != seal(data)  # a fresh salt each time


def test_truncation_reorder_and_edits_are_refused():
    data = os.urandom(2 * crypto.CHUNK + 10)
    sealed = seal(data)
    record = 4 + crypto.CHUNK + crypto.TAG
    head = len(crypto.MAGIC) + crypto.SALT_BYTES
    with pytest.raises(BackupDamaged, match="cut short"):
        open_(sealed[: head + 2 * record])  # whole records dropped from the end
    with pytest.raises(BackupDamaged):
        open_(sealed[:-1])
    swapped = (
        sealed[:head] + sealed[head + record : head + 2 * record] + sealed[head : head + record]
    )
    with pytest.raises(BackupDamaged):
        open_(swapped + sealed[head + 2 * record :])
    edited = bytearray(sealed)
    edited[head + 100] ^= 1
    with pytest.raises(BackupDamaged, match="authentication"):
        open_(bytes(edited))
    with pytest.raises(BackupDamaged, match="after the last"):
        open_(sealed + b"x")
    with pytest.raises(BackupDamaged, match="authentication"):
        open_(sealed, key=os.urandom(32))


def test_keys():
    text = crypto.new_key()
    key = crypto.parse_key(text)
    assert len(key) == 32
    assert crypto.parse_key(key.hex()) == key
    assert crypto.parse_key(text.replace("+", "-").replace("/", "_").rstrip("=")) == key
    for bad in ["", "changeme", "00" * 16, "zz" * 32]:
        with pytest.raises(BackupKeyError, match="keygen"):
            crypto.parse_key(bad)
    assert crypto.key_id(key) != crypto.key_id(os.urandom(32)) and len(crypto.key_id(key)) == 16
