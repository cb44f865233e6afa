#!/usr/bin/env python3
"""An attacker without the key, for the namespace suite's authenticated
stream scenario (PROTOCOL.md §11): it hears the group and sends back, for
each datagram heard, a replay, a bit-flipped copy, a truncated copy, a copy
under a made-up tag or key id, a copy reflected to the publisher, a plain
forged heartbeat claiming a far sequence number, and replays of old
datagrams. Bounded in time and in datagrams sent; prints one JSON line of
what it sent to OUT.

    attacker.py GROUP PORT SECONDS OUT
"""
import json
import os
import random
import signal
import socket
import struct
import sys
import time

group, port, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
MAX_SENT = 400_000
rng = random.Random(7)

rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
rx.bind((group, port))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
              struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1")))
rx.settimeout(0.2)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.bind(("127.0.0.1", 0))
me = tx.getsockname()
tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

sent = {k: 0 for k in ("replay", "old_replay", "bitflip", "truncated", "bad_tag",
                       "unknown_key", "reflected", "forged_plain")}
heard = 0
recording = []


def send(kind, data, to=None):
    tx.sendto(data, to or (group, port))
    sent[kind] += 1


def tally(*_):
    with open(out, "w") as f:
        print(json.dumps({"heard": heard, "sent": sent, "total": sum(sent.values())}), file=f)
    sys.exit(0)


# Killed (SIGTERM) or out of time: the tally either way.
signal.signal(signal.SIGTERM, tally)
end = time.monotonic() + seconds
while time.monotonic() < end and sum(sent.values()) < MAX_SENT:
    try:
        d, src = rx.recvfrom(65536)
    except socket.timeout:
        continue
    if src == me or len(d) < 28 or d[:4] != b"GRPV":
        continue  # its own datagrams, looped back
    heard += 1
    if len(recording) < 20_000:
        recording.append(d)
    send("replay", d)
    flip = bytearray(d)
    i = rng.randrange(len(flip))
    flip[i] ^= 1 << rng.randrange(8)
    send("bitflip", bytes(flip))
    send("truncated", d[:rng.randrange(1, len(d))])
    if d[5] & 1 and len(d) >= 64:
        send("bad_tag", d[:-16] + os.urandom(16))
        send("unknown_key", d[:28] + os.urandom(4) + d[32:])
    send("reflected", d, src)
    if heard % 20 == 0:
        # A plain heartbeat of the session heard, claiming seq 2^40.
        hb = (d[:5] + b"\x00" + d[6:20] + struct.pack(">Q", rng.getrandbits(40))
              + struct.pack(">BBH", 0x06, 0, 20) + struct.pack(">QQI", 1 << 40, 0, 100))
        send("forged_plain", hb)
        for old in rng.sample(recording, min(5, len(recording))):
            send("old_replay", old)

tally()
