"""Backup encryption: AES-256-GCM over a stream, in chunks, so a large blob never sits whole in
memory.

A key is 32 random bytes, written as base64 or 64 hex digits (`clearscan backup keygen` prints
one; CLEARSCAN_BACKUP_KEY holds it). Each file gets its own key, derived from the backup key
and a random 16-byte salt with HKDF-SHA256, so nonces can simply count. A file is::

    MAGIC (8 bytes) | salt (16 bytes) | records...
    record = ciphertext length (4 bytes, big-endian) | ciphertext with its 16-byte GCM tag

Record i is chunk i of the plaintext (1 MiB; the last may be shorter or empty), sealed with the
nonce i (11 bytes, big-endian) + a last-record flag byte and the header as associated data
(the STREAM construction): a reordered, dropped, truncated or appended record fails to open.

The key id (16 hex digits of an HMAC of a fixed label) names a key without revealing it; the
manifest records it and carries an HMAC-SHA256 of its own contents under the key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clearscan.backup.errors import BackupDamaged, BackupKeyError

MAGIC = b"CSBKENC1"
SALT_BYTES = 16
CHUNK = 1 << 20
TAG = 16
ALGORITHM = "AES-256-GCM"
_MAX_RECORD = CHUNK + TAG


def parse_key(text: str) -> bytes:
    """The 32-byte key from its base64 (standard or URL-safe) or hex form; BackupKeyError when
    it is anything else."""
    raw = text.strip()
    if len(raw) == 64:
        try:
            return bytes.fromhex(raw)
        except ValueError:
            pass
    try:
        padded = raw + "=" * (-len(raw) % 4)
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise BackupKeyError(
            "CLEARSCAN_BACKUP_KEY is not a backup key: it must be 32 random bytes written as "
            "base64 (44 characters) or 64 hex digits; `clearscan backup keygen` prints a new one"
        )
    return key


def new_key() -> str:
    """A fresh key in its base64 form."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def key_id(key: bytes) -> str:
    return hmac.new(key, b"clearscan-backup-key-id", hashlib.sha256).hexdigest()[:16]


def manifest_mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, b"clearscan-backup-manifest\x00" + body, hashlib.sha256).hexdigest()


def _file_key(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt, info=b"clearscan-backup-file"
    ).derive(key)
    return AESGCM(derived)


def _nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _chunks(src: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        chunk = src.read(size)
        if not chunk:
            return
        yield chunk


def encrypt(chunks: Iterable[bytes], key: bytes) -> Iterator[bytes]:
    """The encrypted form of the plaintext `chunks` (re-chunked to CHUNK bytes), as it goes."""
    salt = os.urandom(SALT_BYTES)
    header = MAGIC + salt
    aead = _file_key(key, salt)
    yield header
    buf = bytearray()
    i = 0
    pending: bytes | None = None  # one chunk held back: the last one is sealed differently
    for piece in chunks:
        buf += piece
        while len(buf) >= CHUNK:
            if pending is not None:
                yield _record(aead, i, pending, header, last=False)
                i += 1
            pending = bytes(buf[:CHUNK])
            del buf[:CHUNK]
    if buf:
        if pending is not None:
            yield _record(aead, i, pending, header, last=False)
            i += 1
        pending = bytes(buf)
    yield _record(aead, i, pending or b"", header, last=True)


def _record(aead: AESGCM, i: int, plain: bytes, header: bytes, *, last: bool) -> bytes:
    sealed = aead.encrypt(_nonce(i, last), plain, header)
    return struct.pack(">I", len(sealed)) + sealed


def decrypt(src: BinaryIO, key: bytes, *, what: str) -> Iterator[bytes]:
    """The plaintext of an encrypted file, chunk by chunk. BackupDamaged names `what` when a
    record fails to open (damaged or cut short) or data follows the last record."""
    header = _read_exact(src, len(MAGIC) + SALT_BYTES)
    if len(header) != len(MAGIC) + SALT_BYTES or not header.startswith(MAGIC):
        raise BackupDamaged(f"{what}: not an encrypted backup file (damaged header)")
    aead = _file_key(key, header[len(MAGIC) :])
    i = 0
    while True:
        size_raw = _read_exact(src, 4)
        if len(size_raw) != 4:
            raise BackupDamaged(f"{what}: cut short (the last encrypted record is missing)")
        (size,) = struct.unpack(">I", size_raw)
        if size < TAG or size > _MAX_RECORD:
            raise BackupDamaged(f"{what}: damaged (record {i} has an impossible length)")
        sealed = _read_exact(src, size)
        if len(sealed) != size:
            raise BackupDamaged(f"{what}: cut short in record {i}")
        try:
            plain = aead.decrypt(_nonce(i, False), sealed, header)
            yield plain
            i += 1
            continue
        except InvalidTag:
            pass
        try:
            plain = aead.decrypt(_nonce(i, True), sealed, header)
        except InvalidTag:
            raise BackupDamaged(
                f"{what}: fails its authentication check (damaged or altered)"
            ) from None
        if src.read(1):
            raise BackupDamaged(f"{what}: data after the last encrypted record")
        if plain:
            yield plain
        return


def _read_exact(src: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = src.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def plain_chunks(src: BinaryIO) -> Iterator[bytes]:
    return _chunks(src)
