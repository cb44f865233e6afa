#!/usr/bin/env python3
"""Computes PROTOCOL.md §11.6's sealed-datagram vectors independently of the
Rust implementation: HKDF from Python's hmac module, AES-256-GCM-SIV from
the `cryptography` package (pip install cryptography>=42). `cargo test`
checks the Rust implementation against the vectors this prints.

    python3 tools/auth-vectors.py
"""
import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def seal(name, key, role, salt, plain, encrypt):
    key_id = hmac.new(key, b"grapevine key id", hashlib.sha256).digest()[:4]
    prk = hmac.new(b"grapevine v1", key, hashlib.sha256).digest()
    stream = plain[8:12]
    frame_key = hkdf_expand(prk, b"grapevine v1 frame" + bytes([role]) + stream + key_id + salt)
    nonce = bytes(4) + plain[20:28]
    flags = 0x01 | (0x02 if encrypt else 0) | (0x04 if role == 1 else 0)
    # Bit 3: a CycleBegin, then a LeafSnapshot (PROTOCOL.md §8.1, §11.2).
    first_len = int.from_bytes(plain[30:32], "big")
    second = 28 + 4 + first_len
    if plain[28] == 0x04 and len(plain) > second and plain[second] == 0x03:
        flags |= 0x08
    head = plain[:5] + bytes([flags]) + plain[6:28] + key_id + salt
    body = plain[28:]
    aead = AESGCMSIV(frame_key)
    if encrypt:
        sealed = head + aead.encrypt(nonce, body, head)
    else:
        sealed = head + body + aead.encrypt(nonce, b"", head + body)
    words = lambda b: " ".join(b.hex()[i:i + 8] for i in range(0, len(b) * 2, 8))
    print("```sealed")
    print(f"name: {name}")
    print(f"key: {key.hex()}")
    print(f"key_id: {key_id.hex()}")
    print(f"role: {role}")
    print(f"salt: {salt.hex()}")
    print(f"frame_key: {frame_key.hex()}")
    print(f"nonce: {nonce.hex()}")
    print(f"plain: {words(plain)}")
    print(f"sealed: {words(sealed)}")
    print("```")
    print()


KEY = bytes(range(32))
SALT = bytes(range(0xA0, 0xB0))
HEARTBEAT = bytes.fromhex(
    "47525056 01000000 00000007 01234567 89abcdef 00000000 00000000 06000014"
    " 00000000 00000000 00064459 41624000 00000064".replace(" ", ""))
TWO_DELTAS = bytes.fromhex(
    "47525056 01000000 00000001 00000000 0000feed 00000000 00000001 01000016"
    " 00000000 00000001 00000000 00000000 0100026b 310a0100 00160000 00000000"
    " 00020000 00000000 00010000 026b310b".replace(" ", ""))
NAK = bytes.fromhex(
    "47525056 01000000 00000001 00000000 0000feed 00000000 00000000 07000026"
    " deadbeef 00020000 00000000 00050000 00000000 00070000 00000000 000a0000"
    " 00000000 000a".replace(" ", ""))

seal("sealed-heartbeat", KEY, 0, SALT, HEARTBEAT, False)
seal("encrypted-deltas", KEY, 0, SALT, TWO_DELTAS, True)
SNAPSHOTS = bytes.fromhex(
    "47525056 01000000 00000001 00000000 0000feed 00000000 00000002 04000010"
    " 00000003 00000000 00000002 00000002 03000016 00000003 00000000 00000000"
    " 00000002 0000026b 310b0300 00150000 00030000 00010000 00000000 00020100"
    " 026b3205 00001000 00000300 00000000 00000200 000002".replace(" ", ""))

seal("sealed-nak", KEY, 1, bytes([0x5A] * 16), NAK, False)
seal("encrypted-snapshots", KEY, 0, SALT, SNAPSHOTS, True)
