#!/usr/bin/env python3
"""Builds PROTOCOL.md §12.5's relay link vectors independently of the Rust
implementation, with Python's struct.pack and nothing else, and prints the
`relay-frame` blocks. The blocks in PROTOCOL.md must be exactly this output;
`cargo test` (grapevine-core/src/relay/tests.rs) checks the Rust codec
against them.

    python3 tools/relay-vectors.py
"""
import struct

# §3 header and the §4.5 Heartbeat of §9's `heartbeat` vector.
HEARTBEAT = struct.pack(">4sBBHIQQ", b"GRPV", 1, 0, 0, 7, 0x0123456789ABCDEF, 0) + struct.pack(
    ">BBHQQI", 0x06, 0, 20, 0, 1764000000000000, 100
)
# §9's `retransmit` vector: a Retransmit of seq 1 (CREATES, key "k1", payload 0a).
RETRANSMIT = struct.pack(">4sBBHIQQ", b"GRPV", 1, 0, 0, 1, 0xFEED, 9) + struct.pack(
    ">BBHQQBH2s1s", 0x02, 0, 22, 1, 0, 0x01, 2, b"k1", b"\x0a"
)
# §11.6's `sealed-nak`: the sealed bytes, copied (sealing needs AES-GCM-SIV,
# see tools/auth-vectors.py).
SEALED_NAK = bytes.fromhex(
    "47525056 01050000 00000001 00000000 0000feed 00000000 00000000 d2e335cf"
    " 5a5a5a5a 5a5a5a5a 5a5a5a5a 5a5a5a5a 07000026 deadbeef 00020000 00000000"
    " 00050000 00000000 00070000 00000000 000a0000 00000000 000a71bd f512f6e7"
    " 0c3f5327 b6a07a51 c9f4".replace(" ", "")
)


def frame(kind, body):
    return struct.pack(">BH", kind, len(body)) + body


def hello_body(role, relay_id, max_datagram, streams, magic=b"GRPR", count=None):
    count = len(streams) if count is None else count
    return struct.pack(">4sBBQIH", magic, 1, role, relay_id, max_datagram, count) + b"".join(
        struct.pack(">I", s) for s in streams
    )


def text(b):
    return b.hex() if b else "-"


def words(b):
    """Kind, length, a Nak's flags, then the rest of the body in 4-byte words
    (the spaces are for reading only)."""
    head = 4 if b[0] == 0x12 else 3
    rest = b[head:]
    parts = [b[:1], b[1:3], b[3:head]] + [rest[i : i + 4] for i in range(0, len(rest), 4)]
    return " ".join(p.hex() for p in parts if p)


def block(name, data, result):
    print("```relay-frame")
    print(f"name: {name}")
    print(f"frame: {words(data)}")
    print(result)
    print("```")
    print()


# Frames that decode, and re-encode to the same bytes.
block(
    "hello-feeder",
    frame(0x01, hello_body(0, 0x0102030405060708, 1452, [1, 7])),
    "decoded: Hello role=feeder relay_id=0x0102030405060708 max_datagram=1452 streams=1,7",
)
block(
    "hello-subscriber",
    frame(0x01, hello_body(1, 0x1122334455667788, 65507, [])),
    "decoded: Hello role=subscriber relay_id=0x1122334455667788 max_datagram=65507 streams=-",
)
block(
    "welcome",
    frame(0x02, struct.pack(">BQI", 1, 0x8877665544332211, 1452)),
    "decoded: Welcome relay_id=0x8877665544332211 max_datagram=1452",
)
REASON = "feeder not allowed".encode()
block(
    "refuse-not-allowed",
    frame(0x03, struct.pack(">H", 3) + REASON),
    f"decoded: Refuse code=3 reason={text(REASON)}",
)
block(
    "datagram-heartbeat",
    frame(0x10, HEARTBEAT),
    f"decoded: Datagram datagram={text(HEARTBEAT)}",
)
block(
    "repair-retransmit",
    frame(0x11, RETRANSMIT),
    f"decoded: Repair datagram={text(RETRANSMIT)}",
)
block(
    "nak-second-ask",
    frame(0x12, struct.pack(">B", 0x01) + SEALED_NAK),
    f"decoded: Nak flags=0x01 datagram={text(SEALED_NAK)}",
)
block(
    "shed",
    frame(0x13, struct.pack(">IQQQ", 7, 0x0123456789ABCDEF, 12, 17424)),
    "decoded: Shed stream=7 session=0x0123456789abcdef datagrams=12 bytes=17424",
)
block("ping", frame(0x20, struct.pack(">Q", 42)), "decoded: Ping token=42")
block("pong", frame(0x21, struct.pack(">Q", 42)), "decoded: Pong token=42")
block("goodbye", frame(0x30, struct.pack(">H", 0)), "decoded: Goodbye code=0 reason=-")

# A kind this version does not define, in the skippable range.
block("skippable-unknown", frame(0x41, bytes([1, 2, 3])), "skipped: kind=0x41")

# Not a whole frame yet.
block("length-past-the-end", frame(0x20, struct.pack(">Q", 42))[:8], "incomplete: needed=11")
block("header-cut", frame(0x20, struct.pack(">Q", 42))[:2], "incomplete: needed=3")

# Frames that close the link.
block("critical-unknown", frame(0x80, bytes(2)), "error: unknown_kind")
block("datagram-too-short", frame(0x10, HEARTBEAT[:27]), "error: bad_length")
block("nak-without-datagram", frame(0x12, bytes([0x01])), "error: bad_length")
block(
    "hello-bad-magic",
    frame(0x01, hello_body(0, 0x0102030405060708, 1452, [1, 7], magic=b"GRPV")),
    "error: bad_hello",
)
block(
    "hello-count-disagrees",
    frame(0x01, hello_body(0, 0x0102030405060708, 1452, [1], count=2)),
    "error: bad_length",
)
block(
    "hello-bad-role",
    frame(0x01, hello_body(2, 0x0102030405060708, 1452, [])),
    "error: bad_role",
)
block(
    "welcome-other-version",
    frame(0x02, struct.pack(">BQI", 2, 0x8877665544332211, 1452)),
    "error: bad_hello",
)
block("refuse-not-utf8", frame(0x03, struct.pack(">H", 3) + b"\xff"), "error: not_utf8")
