/*
 * Learned timing: per receiving domain and class, what deferrals turned out
 * to mean (see learn.h for the model and the API).
 *
 * Everything is fixed-size and saturating: a domain that has seen a
 * million deliveries takes the same 256 bytes as one that has seen one,
 * and no count can wrap into a small number that would look like fresh
 * evidence. The text form is strict in both directions: learn_decode
 * accepts exactly what learn_encode writes for a consistent state (it
 * re-encodes what it read and compares), so a value read back from Redis
 * after a crash, a manual HSET or a bit flip is either the state that was
 * written or nothing at all.
 */
#include "queue/learn.h"

#include <string.h>

static uint32_t sat_add32(uint32_t a, uint32_t b) { return a > UINT32_MAX - b ? UINT32_MAX : a + b; }
static uint64_t sat_add64(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

static uint32_t clamp_age(int64_t age_ms)
{
    if (age_ms < 0)
        return 0;
    if (age_ms > (int64_t)LEARN_AGE_MAX)
        return LEARN_AGE_MAX;
    return (uint32_t)age_ms;
}

uint32_t learn_class_key(const char *class_name)
{
    uint32_t h = 2166136261u;

    for (const char *s = class_name ? class_name : ""; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h ? h : 1;
}

void learn_init(struct learn_domain *d) { memset(d, 0, sizeof(*d)); }

static struct learn_slot *find(struct learn_domain *d, uint32_t key)
{
    for (int i = 0; i < LEARN_SLOTS; i++)
        if (d->slots[i].key == key)
            return &d->slots[i];
    return NULL;
}

static const struct learn_slot *find_const(const struct learn_domain *d, uint32_t key)
{
    for (int i = 0; i < LEARN_SLOTS; i++)
        if (d->slots[i].key == key)
            return &d->slots[i];
    return NULL;
}

/* The class's slot, made when missing: a free one, else the one changed
 * longest ago (its class has gone quiet at this domain). */
static struct learn_slot *slot_for(struct learn_domain *d, uint32_t key)
{
    struct learn_slot *s = find(d, key), *oldest = &d->slots[0];

    if (key == 0)
        return NULL;
    if (s)
        return s;
    for (int i = 0; i < LEARN_SLOTS; i++) {
        if (d->slots[i].key == 0) {
            oldest = &d->slots[i];
            break;
        }
        if (d->slots[i].last_ms < oldest->last_ms)
            oldest = &d->slots[i];
    }
    memset(oldest, 0, sizeof(*oldest));
    oldest->key = key;
    return oldest;
}

void learn_delivered(struct learn_domain *d, uint32_t class_key, int attempts, int64_t age_ms, int64_t now_ms)
{
    struct learn_slot *s = d ? slot_for(d, class_key) : NULL;
    uint32_t age = clamp_age(age_ms);

    if (!s)
        return;
    s->delivered = sat_add32(s->delivered, 1);
    s->attempts = sat_add32(s->attempts, attempts > 0 ? (uint32_t)attempts : 1);
    s->age_sum = sat_add64(s->age_sum, age);
    /* 0 means "none"; an age of 0 (delivered the instant it was deferred)
     * teaches nothing about waiting anyway. */
    if (age > 0 && (s->ok_ms == 0 || age < s->ok_ms))
        s->ok_ms = age;
    if (age > 0 && s->evidence < UINT16_MAX)
        s->evidence++;
    s->last_ms = now_ms > 0 ? now_ms : 0;
}

void learn_deferred(struct learn_domain *d, uint32_t class_key, int64_t age_ms, int64_t now_ms)
{
    struct learn_slot *s = d ? slot_for(d, class_key) : NULL;
    uint32_t age = clamp_age(age_ms);

    if (!s)
        return;
    s->deferred = sat_add32(s->deferred, 1);
    s->ring[s->pos] = age;
    s->pos = (uint8_t)((s->pos + 1) % LEARN_RING);
    if (s->nring < LEARN_RING)
        s->nring++;
    /* Deferred at or past the age that used to be accepted: the domain
     * wants longer now. Start again rather than average old and new. */
    if (s->ok_ms != 0 && age >= s->ok_ms) {
        s->ok_ms = 0;
        s->evidence = 0;
    }
    s->last_ms = now_ms > 0 ? now_ms : 0;
}

static uint32_t ring_max(const struct learn_slot *s)
{
    uint32_t m = 0;

    for (int i = 0; i < s->nring; i++)
        if (s->ring[i] > m)
            m = s->ring[i];
    return m;
}

bool learn_estimate(const struct learn_domain *d, uint32_t class_key, int min_evidence, int tolerance_pct,
                    int64_t forget_ms, int64_t now_ms, int64_t *accept_ms)
{
    const struct learn_slot *s = d ? find_const(d, class_key) : NULL;

    if (!s || class_key == 0 || s->ok_ms == 0 || s->evidence < (min_evidence > 0 ? min_evidence : 1))
        return false;
    if (forget_ms > 0 && now_ms - s->last_ms > forget_ms)
        return false;
    uint64_t late = ring_max(s), ok = s->ok_ms;
    if (late >= ok) {
        *accept_ms = (int64_t)late;
        return true;
    }
    /* The domain starts accepting somewhere in (late, ok]. A loose bracket
     * is halved: a retry there either gets through (ok comes down to it)
     * or is deferred (late goes up to it), so a handful of retries find an
     * acceptance time that the table's first lucky retry overstated. */
    uint64_t tol = ok * (uint64_t)(tolerance_pct > 0 ? tolerance_pct : 0) / 100;
    *accept_ms = (int64_t)(ok - late > tol ? late + (ok - late) / 2 : ok);
    return true;
}

void learn_view(const struct learn_domain *d, uint32_t class_key, struct learn_view *v)
{
    const struct learn_slot *s = d ? find_const(d, class_key) : NULL;

    memset(v, 0, sizeof(*v));
    if (!s || class_key == 0)
        return;
    v->known = true;
    v->delivered = s->delivered;
    v->deferred = s->deferred;
    if (s->delivered > 0) {
        v->mean_attempts = (double)s->attempts / s->delivered;
        v->mean_age_ms = (int64_t)(s->age_sum / s->delivered);
    }
    v->ok_ms = s->ok_ms;
    v->latest_deferral_ms = ring_max(s);
    v->evidence = s->evidence;
    v->last_ms = s->last_ms;
}

/* ---- the text form ---- */

struct out {
    char *p;
    size_t len, cap;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || o->len + n + 1 > o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void put_u64(struct out *o, uint64_t v)
{
    char tmp[24];
    size_t n = 0;

    do {
        tmp[sizeof(tmp) - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + sizeof(tmp) - n, n);
}

static void put_hex32(struct out *o, uint32_t v)
{
    char tmp[8];

    for (int i = 7; i >= 0; i--) {
        tmp[i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    }
    put(o, tmp, 8);
}

size_t learn_encode(const struct learn_domain *d, char *buf, size_t cap)
{
    struct out o = {buf, 0, cap, false};

    if (cap == 0)
        return 0;
    buf[0] = '\0';
    put(&o, "v1", 2);
    for (int i = 0; i < LEARN_SLOTS; i++) {
        const struct learn_slot *s = &d->slots[i];
        if (s->key == 0)
            continue;
        put(&o, ";", 1);
        put_hex32(&o, s->key);
        const uint64_t fields[] = {s->delivered, s->deferred, s->attempts, s->age_sum,
                                   (uint64_t)(s->last_ms > 0 ? s->last_ms : 0), s->ok_ms, s->evidence};
        for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
            put(&o, ",", 1);
            put_u64(&o, fields[f]);
        }
        put(&o, ",", 1);
        if (s->nring == 0)
            put(&o, "-", 1);
        int first = s->nring < LEARN_RING ? 0 : s->pos;
        for (int k = 0; k < s->nring && k < LEARN_RING; k++) {
            if (k)
                put(&o, "/", 1);
            put_u64(&o, s->ring[(first + k) % LEARN_RING]);
        }
    }
    if (o.full) {
        buf[0] = '\0';
        return 0;
    }
    return o.len;
}

struct in {
    const char *p;
    size_t len, i;
};

/* A decimal number without leading zeros, at most max. */
static bool get_u64(struct in *in, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    size_t start = in->i;

    while (in->i < in->len && in->p[in->i] >= '0' && in->p[in->i] <= '9') {
        unsigned dgt = (unsigned)(in->p[in->i] - '0');
        if (v > (UINT64_MAX - dgt) / 10)
            return false;
        v = v * 10 + dgt;
        in->i++;
    }
    if (in->i == start || (in->i - start > 1 && in->p[start] == '0') || v > max)
        return false;
    *out = v;
    return true;
}

static bool get_char(struct in *in, char c)
{
    if (in->i >= in->len || in->p[in->i] != c)
        return false;
    in->i++;
    return true;
}

static bool get_hex32(struct in *in, uint32_t *out)
{
    uint32_t v = 0;

    if (in->len - in->i < 8)
        return false;
    for (int k = 0; k < 8; k++) {
        char c = in->p[in->i++];
        unsigned x;
        if (c >= '0' && c <= '9')
            x = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x = (unsigned)(c - 'a' + 10);
        else
            return false;
        v = v << 4 | x;
    }
    *out = v;
    return true;
}

static bool get_slot(struct in *in, struct learn_slot *s)
{
    uint64_t v[7];
    static const uint64_t max[7] = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT64_MAX, INT64_MAX, LEARN_AGE_MAX,
                                    UINT16_MAX};

    if (!get_hex32(in, &s->key) || s->key == 0)
        return false;
    for (int f = 0; f < 7; f++)
        if (!get_char(in, ',') || !get_u64(in, max[f], &v[f]))
            return false;
    s->delivered = (uint32_t)v[0];
    s->deferred = (uint32_t)v[1];
    s->attempts = (uint32_t)v[2];
    s->age_sum = v[3];
    s->last_ms = (int64_t)v[4];
    s->ok_ms = (uint32_t)v[5];
    s->evidence = (uint16_t)v[6];
    if (!get_char(in, ','))
        return false;
    if (get_char(in, '-')) {
        s->nring = 0;
    } else {
        do {
            uint64_t age;
            if (s->nring >= LEARN_RING || !get_u64(in, LEARN_AGE_MAX, &age))
                return false;
            s->ring[s->nring++] = (uint32_t)age;
        } while (get_char(in, '/'));
    }
    s->pos = (uint8_t)(s->nring % LEARN_RING);
    /* What learn_delivered and learn_deferred can produce, and no more:
     * evidence counts deliveries, ok_ms needs one, the ring deferrals. */
    if (s->evidence > s->delivered || (s->ok_ms == 0) != (s->evidence == 0) || s->nring > s->deferred ||
        s->attempts < s->delivered)
        return false;
    return true;
}

int learn_decode(struct learn_domain *d, const char *text, size_t len)
{
    struct in in = {text, len, 0};
    char again[LEARN_ENCODED_MAX];
    int n = 0;

    learn_init(d);
    if (!text || len < 2 || len >= LEARN_ENCODED_MAX || text[0] != 'v' || text[1] != '1')
        goto bad;
    in.i = 2;
    while (in.i < in.len) {
        if (n >= LEARN_SLOTS || !get_char(&in, ';') || !get_slot(&in, &d->slots[n]))
            goto bad;
        for (int k = 0; k < n; k++)
            if (d->slots[k].key == d->slots[n].key)
                goto bad;
        n++;
    }
    /* The canonical form only: what was read must be what would be
     * written. */
    if (learn_encode(d, again, sizeof(again)) != len || memcmp(again, text, len) != 0)
        goto bad;
    return 0;
bad:
    learn_init(d);
    return -1;
}
