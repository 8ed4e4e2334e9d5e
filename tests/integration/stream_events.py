"""The events of the event stream as a reader sees them: an entry of one
event (field "e") is that event; a batch entry (field "b", a burst's events,
proto/event.h) holds n events whose ids are the n ids up to the entry's
own: <ms>-<seq - n + 1> ... <ms>-<seq>."""


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def expand_entry(eid, fields):
    """[(event id, body)] of one stream entry (XRANGE's eid and fields)."""
    eid = _text(eid)
    if not fields:
        return []
    value = _text(fields[1])
    if not value.startswith("#"):
        return [(eid, value)]
    head, _, rest = value.partition("\n")
    n = int(head[1:])
    ms, seq = (int(x) for x in eid.split("-"))
    out, pos = [], 0
    for k in range(n):
        colon = rest.index(":", pos)
        length = int(rest[pos:colon])
        # lengths count bytes: the bodies here are ASCII (ids, recipients
        # and classes as the tests write them)
        out.append(("%d-%d" % (ms, seq - (n - 1 - k)), rest[colon + 1:colon + 1 + length]))
        pos = colon + 1 + length
    return out


def events(redis, key="rebound:events", start="-", end="+"):
    """Every event of the stream, in stream order, as (event id, body)."""
    out = []
    for eid, fields in redis.cmd("XRANGE", key, start, end) or []:
        out.extend(expand_entry(eid, fields))
    return out
