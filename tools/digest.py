#!/usr/bin/env python3
"""An independent reference for PROTOCOL.md §10 (the state digest) and
Appendix A (the demo order book), written from the spec, not the Rust code.

    pip install xxhash
    python3 tools/digest.py                 # digests of a few states
    python3 tools/digest.py book 5 1        # OrderBook::generate(5, 1): levels and digest
"""
import struct
import sys

import xxhash

MASK64 = (1 << 64) - 1
MASK128 = (1 << 128) - 1


def leaf_hash(key: bytes, value: bytes) -> int:
    """XXH3-128, seed 0, of u64be(len(key)) || key || value."""
    return xxhash.xxh3_128_intdigest(struct.pack(">Q", len(key)) + key + value)


def digest(leaves) -> str:
    """The text form of the digest of (key, value) byte pairs."""
    total = 0
    for key, value in leaves:
        total = (total + leaf_hash(key, value)) & MASK128
    return f"{total:032x}"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def zigzag(n: int) -> int:
    return ((n << 1) ^ (n >> 63)) & MASK64


SIDES = {"bid": 0, "ask": 1}


def book_key(side: str, price: int) -> bytes:
    return varint(SIDES[side]) + varint(price)


def book_value(qty: int) -> bytes:
    return varint(qty)


def book_delta(side: str, price: int, change: int) -> bytes:
    return book_key(side, price) + varint(zigzag(change))


def book_digest(levels) -> str:
    """Digest of a book given as (side, price, qty) levels."""
    return digest((book_key(s, p), book_value(q)) for s, p, q in levels)


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return (self.next() * n) >> 64


def generate(levels: int, seed: int):
    """OrderBook::generate: the book `grapevine pub --leaves N --seed S` starts from."""
    rng = SplitMix64(seed)
    asks = levels // 2
    out = []
    price = 10_000_000
    for _ in range(levels - asks):
        price = max(price - (1 + rng.below(3)), 0)
        out.append(("bid", price, 1 + rng.below(1000)))
    price = 10_000_000
    for _ in range(asks):
        price += 1 + rng.below(3)
        out.append(("ask", price, 1 + rng.below(1000)))
    return out


def main(args):
    if args[:1] == ["book"]:
        levels = generate(int(args[1]), int(args[2]))
        for s, p, q in sorted(levels, key=lambda l: book_key(l[0], l[1])):
            print(f"level: side={s} price={p} qty={q} "
                  f"key={book_key(s, p).hex()} value={book_value(q).hex()}")
        print(f"digest: {book_digest(levels)}")
        return
    for name, leaves in [
        ("empty-state", []),
        ("one-leaf", [(b"k1", b"v1")]),
        ("two-leaves", [(b"k1", b"v1"), (b"k2", b"v2")]),
        ("key-framing-and-wrap", [(b"ab", b"c"), (b"a", b"bc")]),
        ("empty-key-and-value", [(b"", b""), (b"\0", b"")]),
    ]:
        print(f"{name}: {digest(leaves)}")


if __name__ == "__main__":
    main(sys.argv[1:])
