"""The shard of a recipient, computed here independently of the daemon, so
that the HA tests can check where the daemon put each record: CRC16 (XMODEM,
Redis Cluster's key-slot hash) of the address with A-Z lowered, modulo the
number of shards (docs/operations.md, "Shards")."""


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def shard_index(rcpt, n):
    return crc16(rcpt.lower().encode()) % n
