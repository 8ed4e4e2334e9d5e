/*
 * Classification of an SMTP reply into a policy class.
 *
 * Real replies are messy, so the work is in two parts.
 *
 * First the reply is read the way a person reads it. Delivery reports
 * carry it in many shapes: "smtp; 550 5.1.1 <a@b>: user unknown", a
 * multi-line reply joined into one string ("550-5.7.26 This mail ...
 * 550-5.7.26 more ... 550 5.7.26 end"), the enhanced code missing from its
 * field but present in the text ("#4.3.0", "(4.7.1)", "[5.1.1]"), or no
 * enhanced code at all. read_reply() finds the basic code at the start when
 * the caller did not have one, finds the enhanced code in the text when the
 * field is missing, and writes a lower-cased copy of the text into a
 * bounded buffer on the stack with the continuation prefixes removed and
 * white space folded to single spaces. Rule patterns are then written
 * against plain prose ("please try double-checking"), whatever the line
 * breaks were. E-mail addresses in the text are blanked out: they are data,
 * and "marbles@example.com" must not match a pattern "rbl".
 *
 * Then the policy's rules are tried in three tiers (SPEC section 3): rules
 * with text patterns, in file order, first match wins (their other
 * conditions, code and enhanced, must hold too); then rules keyed on the
 * enhanced code, the most specific match winning (an exact code beats a
 * prefix, a longer prefix a shorter one, a narrower code range a wider one,
 * then file order), so an operator's "4.7.650" rule appended at the end of
 * the file still beats the shipped "4.7.*"; then rules keyed on the basic
 * code only, the narrowest range winning. Nothing matched: the policy's
 * temp_other for 4xx, hard_other otherwise.
 *
 * When the enhanced code's class digit disagrees with the basic code
 * ("550 4.2.2 ..."), the enhanced code is still used for matching but the
 * action is chosen by the basic code (classify_action), because the basic
 * code is what the sending MTA acted on.
 *
 * Separately, a small scanner looks for a wait the server named ("try
 * again in 5 minutes", "come back in 00:05:00", "retry after 60s") so that
 * the decision can honour it.
 *
 * No allocation: the only buffer is the lower-cased copy on the stack
 * (request texts are at most 4 KiB; longer ones are cut at the buffer).
 * POSIX regexec may allocate inside the C library; substring patterns,
 * which the shipped policy mostly uses, do not.
 */
#include "queue/classify.h"

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TEXT_BUF 8192
#define ENH_MAX 16
#define WAIT_MAX_MS (7LL * 24 * 3600 * 1000)
#define BIGRAM_BITS 4096

struct reply {
    int code;              /* the basic code used, or 0 */
    char enh[ENH_MAX];     /* the enhanced code used, or "" */
    char text[TEXT_BUF];   /* normalised, lower-cased */
    size_t len;
    /* Which byte pairs occur in text (hashed): a substring pattern one of
     * whose first three byte pairs does not occur in the text cannot match,
     * so most of the shipped policy's hundreds of patterns are ruled out
     * without a strstr. */
    uint64_t bigrams[BIGRAM_BITS / 64];
};

static inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
static inline bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }
static inline char to_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c; }

/* Reads "X.Y.Z" at s (at most n bytes): X one of 2, 4, 5 (2 only when
 * allow_2), Y of 1-3 digits worth 0..7, Z of 1-3 digits; what follows must
 * not continue a number or a word (so "4.2.2.1", an IP address, and
 * "4.2.1@example.com" are not codes).
 * Copies it to out and returns its length, or returns 0. */
static size_t parse_enhanced(const char *s, size_t n, bool allow_2, char out[ENH_MAX])
{
    size_t i = 0, y0, z0;
    int y = 0;

    if (n < 5 || !(s[0] == '4' || s[0] == '5' || (allow_2 && s[0] == '2')) || s[1] != '.')
        return 0;
    i = 2;
    y0 = i;
    while (i < n && is_digit(s[i]) && i - y0 < 3)
        y = y * 10 + (s[i++] - '0');
    if (i == y0 || y > 7 || i >= n || s[i] != '.')
        return 0;
    i++;
    z0 = i;
    while (i < n && is_digit(s[i]) && i - z0 < 3)
        i++;
    if (i == z0)
        return 0;
    if (i < n && (is_digit(s[i]) || is_alpha(s[i]) || s[i] == '@'))
        return 0;
    if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1]))
        return 0;
    memcpy(out, s, i);
    out[i] = '\0';
    return i;
}

/* Reads a basic code (200..599) at s: three digits not followed by another
 * digit, a letter or a dot. Returns it, or 0. */
static int parse_basic(const char *s, size_t n)
{
    if (n < 3 || s[0] < '2' || s[0] > '5' || !is_digit(s[1]) || !is_digit(s[2]))
        return 0;
    if (n > 3 && (is_digit(s[3]) || is_alpha(s[3]) || s[3] == '.'))
        return 0;
    return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
}

/* Where the reply proper starts: past leading space and a delivery
 * report's type prefix ("smtp;", "X-Postfix;"). */
static size_t skip_prefix(const char *s, size_t n)
{
    size_t i = 0, j;

    while (i < n && is_space(s[i]))
        i++;
    for (j = i; j < n && j - i < 24 && (is_alpha(s[j]) || is_digit(s[j]) || s[j] == '-'); j++)
        ;
    if (j > i && j < n && s[j] == ';' && !is_digit(s[i])) {
        i = j + 1;
        while (i < n && is_space(s[i]))
            i++;
    }
    return i;
}

/* Skips separators between a basic code and an enhanced code written
 * after it: "550 5.1.1", "550-5.1.1", "550 #5.1.1", "550 (5.1.1)". */
static size_t skip_code_gap(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '-' || s[i] == '\t'))
        i++;
    if (i < n && (s[i] == '#' || s[i] == '(' || s[i] == '['))
        i++;
    return i;
}

/* The first enhanced code written anywhere in the text, in the forms
 * replies use: after a space or the start, or after '#', '(', '[', '<',
 * ':', '=', quotes. Only classes 4 and 5: a "2.x.y" inside prose is more
 * often a version number than a status. */
static bool find_enhanced(const char *s, size_t n, char out[ENH_MAX])
{
    for (size_t i = 0; i + 5 <= n; i++) {
        if (s[i] != '4' && s[i] != '5')
            continue;
        if (i > 0) {
            char p = s[i - 1];
            if (!(is_space(p) || p == '#' || p == '(' || p == '[' || p == '<' || p == ':' || p == '=' ||
                  p == '"' || p == '\'' || p == ',' || p == ';' || p == '-'))
                continue;
            /* "550-5.7.1" is found as the code after the basic code, but a
             * '-' inside a word or a number ("ab-4.2.1", "10-4.4.4") is not
             * a separator. */
            if (p == '-' && i >= 2 && !is_digit(s[i - 2]))
                continue;
        }
        if (parse_enhanced(s + i, n - i, false, out) > 0)
            return true;
    }
    return false;
}

struct strip_state {
    int code_a, code_b;   /* basic codes whose continuation prefixes are removed */
    const char *enh;      /* the reply's enhanced code, or "" */
    bool continued;       /* a "NNN-" prefix was seen */
};

/* At the start of a token: the length of a continuation prefix of a
 * multi-line reply to drop ("550-5.7.26 ", "550-", and the last line's
 * "550 5.7.26 "), or 0. A "550 " without a following enhanced code is only
 * dropped once a "550-" was seen, so that prose numbers ("exceeded 550
 * messages") stay. */
static size_t continuation_len(const char *s, size_t n, struct strip_state *st)
{
    char enh[ENH_MAX];
    size_t i, e;
    int c = parse_basic(s, n);

    if (c == 0 || (c != st->code_a && c != st->code_b) || n < 4)
        return 0;
    if (s[3] == '-') {
        i = 4;
        e = parse_enhanced(s + i, n - i, true, enh);
        i += e;
        st->continued = true;
    } else if (s[3] == ' ') {
        i = 4;
        e = parse_enhanced(s + i, n - i, true, enh);
        if (e > 0 && st->enh[0] != '\0' && strcmp(enh, st->enh) == 0)
            i += e;
        else if (st->continued)
            i += e;
        else
            return 0;
    } else {
        return 0;
    }
    while (i < n && is_space(s[i]))
        i++;
    return i;
}

static inline bool is_addr_char(char c)
{
    return is_alpha(c) || is_digit(c) || c == '.' || c == '-' || c == '_' || c == '+' || c == '%' || c == '=' ||
           c == '\'' || c == '~';
}

/* Blanks out e-mail addresses in the normalised text: an address is data,
 * and "marbles@example.com" must not match the pattern "rbl", nor
 * "info@antispam.example" the pattern "spam". Lengths are kept. */
static void mask_addresses(struct reply *r)
{
    for (size_t at = 0; at < r->len; at++) {
        if (r->text[at] != '@' || at == 0 || at + 1 >= r->len || !is_addr_char(r->text[at - 1]) ||
            !is_addr_char(r->text[at + 1]))
            continue;
        size_t a = at, b = at + 1;
        while (a > 0 && is_addr_char(r->text[a - 1]))
            a--;
        while (b < r->len && is_addr_char(r->text[b]))
            b++;
        memset(r->text + a, '*', b - a);
        at = b;
    }
}

static inline unsigned bigram_hash(unsigned char a, unsigned char b)
{
    return (((unsigned)a << 5) ^ b ^ ((unsigned)a >> 3)) & (BIGRAM_BITS - 1);
}

static inline bool bigram_seen(const struct reply *r, unsigned char a, unsigned char b)
{
    unsigned h = bigram_hash(a, b);
    return (r->bigrams[h / 64] >> (h % 64)) & 1;
}

static void index_bigrams(struct reply *r)
{
    memset(r->bigrams, 0, sizeof(r->bigrams));
    for (size_t i = 0; i + 1 < r->len; i++) {
        unsigned h = bigram_hash((unsigned char)r->text[i], (unsigned char)r->text[i + 1]);
        r->bigrams[h / 64] |= 1ULL << (h % 64);
    }
}

/* Copies s into r->text lower-cased, with white space folded and
 * continuation prefixes removed, trimmed at both ends. */
static void normalise(const char *s, size_t n, struct strip_state *st, struct reply *r)
{
    size_t i = 0, o = 0;
    bool token_start = true;

    while (i < n && o < TEXT_BUF - 1) {
        char c = s[i];
        if (is_space(c)) {
            if (o > 0 && r->text[o - 1] != ' ')
                r->text[o++] = ' ';
            token_start = true;
            i++;
            continue;
        }
        if (token_start) {
            size_t k = continuation_len(s + i, n - i, st);
            if (k > 0) {
                i += k;
                if (o > 0 && r->text[o - 1] != ' ' && o < TEXT_BUF - 1)
                    r->text[o++] = ' ';
                continue;
            }
        }
        r->text[o++] = to_lower(c);
        token_start = false;
        i++;
    }
    while (o > 0 && r->text[o - 1] == ' ')
        o--;
    r->text[o] = '\0';
    r->len = o;
}

/* Reads code, enhanced and text into r (see the top of the file). */
static void read_reply(int code, const char *enhanced, const char *text, struct reply *r)
{
    char lead_enh[ENH_MAX] = "";
    size_t n = text ? strnlen(text, TEXT_BUF * 2) : 0;
    size_t start = 0;
    int lead_code = 0;
    bool lead_dash = false; /* the text starts "550-": a multi-line reply */

    r->code = (code >= 200 && code <= 599) ? code : 0;
    r->enh[0] = '\0';

    if (enhanced && enhanced[0] != '\0') {
        size_t en = strnlen(enhanced, ENH_MAX);
        char tmp[ENH_MAX] = "";
        if (parse_enhanced(enhanced, en, true, tmp) == en)
            memcpy(r->enh, tmp, sizeof(tmp));
    }

    if (n > 0) {
        start = skip_prefix(text, n);
        lead_code = parse_basic(text + start, n - start);
        lead_dash = lead_code && start + 3 < n && text[start + 3] == '-';
        if (lead_code) {
            size_t i = skip_code_gap(text, n, start + 3);
            size_t e = parse_enhanced(text + i, n - i, true, lead_enh);
            if (e > 0) {
                i += e;
                if (i < n && (text[i] == ')' || text[i] == ']'))
                    i++;
                start = i;
            } else {
                start += 3;
                while (start < n && (text[start] == '-' || text[start] == ' '))
                    start++;
            }
        }
        if (lead_enh[0] == '\0')
            find_enhanced(text + start, n - start, lead_enh);
    }
    /* A report that starts with the server's greeting ("220-mx ... 421
     * 4.2.1 ...") carries no failure code of its own there. */
    if (r->code == 0 && lead_code >= 400)
        r->code = lead_code;
    if (r->enh[0] == '\0')
        memcpy(r->enh, lead_enh, sizeof(lead_enh));

    struct strip_state st = {
        .code_a = r->code,
        .code_b = lead_code ? lead_code : r->code,
        .enh = lead_enh,
        .continued = lead_dash,
    };
    normalise(text ? text + start : "", n - start, &st, r);
    mask_addresses(r);
    index_bigrams(r);
}

/* ---- the wait a server named ---- */

static bool word_at(const char *s, size_t n, size_t i, const char *w)
{
    size_t k = strlen(w);

    if (i + k > n || memcmp(s + i, w, k) != 0)
        return false;
    return i + k == n || !is_alpha(s[i + k]);
}

/* The length of the unit word at s and its size in ms, or 0. */
static size_t parse_unit(const char *s, size_t n, int64_t *unit_ms)
{
    static const struct {
        const char *w;
        int64_t ms;
    } units[] = {
        {"seconds", 1000},   {"second", 1000},  {"secs", 1000},     {"sec", 1000},    {"s", 1000},
        {"minutes", 60000},  {"minute", 60000}, {"mins", 60000},    {"min", 60000},   {"m", 60000},
        {"hours", 3600000},  {"hour", 3600000}, {"hrs", 3600000},   {"hr", 3600000},  {"h", 3600000},
        {"days", 86400000},  {"day", 86400000}, {"d", 86400000},
    };

    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        if (word_at(s, n, 0, units[u].w)) {
            *unit_ms = units[u].ms;
            return strlen(units[u].w);
        }
    }
    return 0;
}

/* A duration at s: "300 seconds", "5m", "1.5 hours", "an hour",
 * "00:05:00" (hh:mm:ss) or "05:00" (mm:ss). Returns ms, or -1. */
static int64_t parse_wait(const char *s, size_t n)
{
    int64_t parts[3], unit;
    size_t i = 0;
    int np = 0;

    if (word_at(s, n, 0, "an") || word_at(s, n, 0, "a") || word_at(s, n, 0, "one")) {
        i = s[0] == 'o' ? 3 : (s[1] == 'n' ? 2 : 1);
        while (i < n && s[i] == ' ')
            i++;
        return parse_unit(s + i, n - i, &unit) ? unit : -1;
    }
    if (i >= n || !is_digit(s[i]))
        return -1;
    for (;;) {
        int64_t v = 0;
        size_t d0 = i;
        while (i < n && is_digit(s[i]) && i - d0 < 7)
            v = v * 10 + (s[i++] - '0');
        if (i < n && is_digit(s[i]))
            return -1;
        parts[np++] = v;
        if (np < 3 && i + 1 < n && s[i] == ':' && is_digit(s[i + 1])) {
            i++;
            continue;
        }
        break;
    }
    if (np == 3)
        return ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000;
    if (np == 2)
        return (parts[0] * 60 + parts[1]) * 1000;
    /* a fraction: "1.5 hours" */
    int64_t frac_num = 0, frac_den = 1;
    if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
        i++;
        while (i < n && is_digit(s[i]) && frac_den < 1000) {
            frac_num = frac_num * 10 + (s[i++] - '0');
            frac_den *= 10;
        }
        if (i < n && is_digit(s[i]))
            return -1;
    }
    if (i < n && s[i] == ' ')
        i++;
    if (!parse_unit(s + i, n - i, &unit))
        return -1;
    return parts[0] * unit + frac_num * unit / frac_den;
}

/* Scans the normalised text for "try again in N minutes" and the like:
 * a trigger word, a few filler words, a duration. Returns the first such
 * wait in ms (at most 7 days), or 0. */
static int64_t stated_wait(const char *s, size_t n)
{
    static const char *const triggers[] = {"again", "retry", "back", "wait", "resend", "later", "greylisted",
                                           "deferred", "delayed", "blocked", "limited"};
    static const char *const fillers[] = {"in", "after", "for", "at", "least", "about", "approximately", "another",
                                          "the", "next", "a", "minimum", "of", "some", "than", "more", "no",
                                          "sooner", "please", "again", "later", "wait", "try", "retry"};

    for (size_t i = 0; i < n; i++) {
        if (i > 0 && is_alpha(s[i - 1]))
            continue;
        size_t end = 0;
        if (s[i] < 'a' || s[i] > 'w')
            continue;
        for (size_t t = 0; t < sizeof(triggers) / sizeof(triggers[0]); t++) {
            size_t k = strlen(triggers[t]);
            if (s[i] == triggers[t][0] && i + k <= n && memcmp(s + i, triggers[t], k) == 0) {
                end = i + k;
                break;
            }
        }
        if (end == 0)
            continue;
        while (end < n && is_alpha(s[end])) /* "retrying", "waiting" */
            end++;
        for (int words = 0; words < 5; words++) {
            while (end < n && s[end] == ' ')
                end++;
            int64_t ms = parse_wait(s + end, n - end);
            if (ms > 0)
                return ms <= WAIT_MAX_MS ? ms : 0;
            bool filler = false;
            for (size_t f = 0; f < sizeof(fillers) / sizeof(fillers[0]); f++) {
                if (word_at(s, n, end, fillers[f])) {
                    end += strlen(fillers[f]);
                    filler = true;
                    break;
                }
            }
            if (!filler)
                break;
        }
    }
    return 0;
}

/* ---- matching ---- */

/* Without a basic code, an enhanced code's class digit says which
 * hundred the reply is in ("5.1.1" alone is a 5xx reply), so a rule for
 * "5xx" still applies to it: otherwise a report that lost its basic code
 * would slip past every rule that names one, sender-side rules included,
 * and fall to the bare enhanced code. */
static bool code_holds(const struct policy_rule *r, const struct reply *rp)
{
    int code = rp->code;

    if (r->code_lo == 0 && r->code_hi == 0)
        return true;
    if (code == 0 && (rp->enh[0] == '4' || rp->enh[0] == '5')) {
        int lo = (rp->enh[0] - '0') * 100;
        return r->code_lo <= lo + 99 && r->code_hi >= lo;
    }
    return code >= r->code_lo && code <= r->code_hi;
}

static bool enhanced_holds(const struct policy_rule *r, const char *enh)
{
    if (r->enhanced[0] == '\0')
        return true;
    if (enh[0] == '\0')
        return false;
    if (r->enhanced_prefix)
        return strncmp(enh, r->enhanced, r->enhanced_len) == 0;
    return strcmp(enh, r->enhanced) == 0;
}

/* The literal a regular expression must contain, if it starts with one
 * ("sender[^.;]{0,40}(invalid|...)" must contain "sender"): copied to lit,
 * its length returned, or 0 when there is none worth checking. Alternation
 * outside parentheses makes the prefix optional, and so does a quantifier
 * on its last character. */
static size_t regex_literal(const char *re, char *lit, size_t cap)
{
    size_t n = 0, i = 0;
    int depth = 0;

    for (const char *c = re; *c; c++) {
        if (*c == '[') { /* a bracket expression: "[(|]" holds no syntax */
            c++;
            if (*c == '^')
                c++;
            if (*c == ']')
                c++;
            while (*c && *c != ']')
                c++;
            if (!*c)
                return 0;
        } else if (*c == '(')
            depth++;
        else if (*c == ')')
            depth--;
        else if (*c == '\\' && c[1] != '\0')
            c++;
        else if (*c == '|' && depth == 0)
            return 0;
    }
    if (re[0] == '^')
        i = 1;
    for (; re[i] != '\0' && n + 1 < cap; i++) {
        char c = re[i];
        if (strchr(".[]()|*+?{}\\^$", c) != NULL)
            break;
        lit[n++] = c;
    }
    if (n > 0 && (re[i] == '?' || re[i] == '*' || re[i] == '{'))
        n--;
    lit[n] = '\0';
    return n >= 3 ? n : 0;
}

static bool text_holds(const struct policy_rule *r, const struct reply *rp)
{
    for (size_t i = 0; i < r->ntexts; i++) {
        const struct policy_text *t = &r->texts[i];
        if (t->is_regex) {
            char lit[64];
            /* regexec with REG_ICASE costs microseconds; most replies lack
             * the literal a pattern starts with, and strstr says so in
             * nanoseconds. The text is lower-cased, the literal as written. */
            if (t->pattern && regex_literal(t->pattern, lit, sizeof(lit)) > 0) {
                for (char *c = lit; *c; c++)
                    *c = to_lower(*c);
                if (strstr(rp->text, lit) == NULL)
                    continue;
            }
            if (t->regex && regexec((const regex_t *)t->regex, rp->text, 0, NULL, 0) == 0)
                return true;
        } else if (t->pattern && t->pattern[0] != '\0') {
            const unsigned char *q = (const unsigned char *)t->pattern;
            if (q[1] != '\0' && !bigram_seen(rp, q[0], q[1]))
                continue;
            if (q[1] != '\0' && q[2] != '\0' && q[3] != '\0') {
                if (!bigram_seen(rp, q[2], q[3]))
                    continue;
                if (q[4] != '\0' && q[5] != '\0' && !bigram_seen(rp, q[4], q[5]))
                    continue;
            }
            if (strstr(rp->text, t->pattern) != NULL)
                return true;
        }
    }
    return false;
}

/* Larger is more specific: an exact code beats any prefix, a longer
 * prefix a shorter one. */
static int enhanced_rank(const struct policy_rule *r)
{
    return r->enhanced_prefix ? (int)r->enhanced_len : 100;
}

static int code_width(const struct policy_rule *r)
{
    return (r->code_lo == 0 && r->code_hi == 0) ? 1000 : r->code_hi - r->code_lo;
}

static int match_rules(const struct policy *p, const struct reply *rp)
{
    int best = -1;

    /* Tier 1: text rules, first match in file order. */
    for (size_t i = 0; i < p->nrules; i++) {
        const struct policy_rule *r = &p->rules[i];
        if (r->ntexts == 0 || r->guard)
            continue;
        if (code_holds(r, rp) && enhanced_holds(r, rp->enh) && text_holds(r, rp))
            return (int)i;
    }
    /* Tier 2: enhanced-code rules, most specific first. */
    for (size_t i = 0; i < p->nrules; i++) {
        const struct policy_rule *r = &p->rules[i];
        if (r->ntexts != 0 || r->guard || r->enhanced[0] == '\0')
            continue;
        if (!code_holds(r, rp) || !enhanced_holds(r, rp->enh))
            continue;
        if (best < 0) {
            best = (int)i;
            continue;
        }
        const struct policy_rule *b = &p->rules[best];
        int dr = enhanced_rank(r) - enhanced_rank(b);
        if (dr > 0 || (dr == 0 && code_width(r) < code_width(b)))
            best = (int)i;
    }
    if (best >= 0)
        return best;
    /* Tier 3: basic-code rules, narrowest range first. */
    for (size_t i = 0; i < p->nrules; i++) {
        const struct policy_rule *r = &p->rules[i];
        if (r->ntexts != 0 || r->guard || r->enhanced[0] != '\0' || (r->code_lo == 0 && r->code_hi == 0))
            continue;
        if (!code_holds(r, rp))
            continue;
        if (best < 0 || code_width(r) < code_width(&p->rules[best]))
            best = (int)i;
    }
    return best;
}

/* The first guard rule (file order) that holds for the reply, or -1: a
 * suppression is only let through when none does. */
static int match_guards(const struct policy *p, const struct reply *rp)
{
    for (size_t i = 0; i < p->nrules; i++) {
        const struct policy_rule *r = &p->rules[i];
        if (!r->guard || r->class_idx < 0 || r->class_idx >= p->nclasses)
            continue;
        if (code_holds(r, rp) && enhanced_holds(r, rp->enh) && text_holds(r, rp))
            return (int)i;
    }
    return -1;
}

/* Classifies one reply (see classify.h). p is only read; out is filled
 * completely. Uses about 8 KiB of stack. */
void classify_reply(const struct policy *p, int code, const char *enhanced, const char *text,
                    struct classification *out)
{
    struct reply rp;
    int rule;

    read_reply(code, enhanced, text, &rp);
    out->code = rp.code;
    memcpy(out->enhanced, rp.enh, sizeof(out->enhanced));
    out->stated_wait_ms = stated_wait(rp.text, rp.len);

    rule = match_rules(p, &rp);
    if (rule >= 0 && p->rules[rule].class_idx >= 0 && p->rules[rule].class_idx < p->nclasses) {
        out->rule_idx = rule;
        out->class_idx = p->rules[rule].class_idx;
    } else {
        out->rule_idx = -1;
        /* Without a basic code, the enhanced code's class digit decides. */
        bool temp = (rp.code >= 400 && rp.code <= 499) || (rp.code == 0 && rp.enh[0] == '4');
        out->class_idx = temp ? p->temp_other : p->hard_other;
    }
    /* Whatever decided it (words, an enhanced code, a basic code), a
     * suppression is the one outcome that cannot be taken back: the guards
     * get the last word on it. */
    if (classify_action(p, out->class_idx, out->code) == ACTION_SUPPRESS) {
        int g = match_guards(p, &rp);
        if (g >= 0) {
            out->rule_idx = g;
            out->class_idx = p->rules[g].class_idx;
        }
    }
}

/* The suppression's reason for this classification (see classify.h). */
enum rule_reason classify_reason(const struct policy *p, const struct classification *c)
{
    if (!p || c->rule_idx < 0 || (size_t)c->rule_idx >= p->nrules)
        return RULE_REASON_UNKNOWN;
    return p->rules[c->rule_idx].reason;
}

/* The class's action for a reply with this basic code: the 4xx column for
 * 400..499, the 5xx column for anything else (the cautious side when the
 * code is unknown). An unknown class gives up. */
enum action classify_action(const struct policy *p, int class_idx, int code)
{
    if (!p || class_idx < 0 || class_idx >= p->nclasses)
        return ACTION_GIVE_UP;
    const struct policy_class *c = &p->classes[class_idx];
    return (code >= 400 && code <= 499) ? c->action_4xx : c->action_5xx;
}

/* ---- the cache ---- */

/* FNV-1a: the keys are short and a good spread over 512 slots is all
 * that is asked of it. */
static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void classify_cached(struct classify_cache *cache, const struct policy *p, uint64_t generation, int code,
                     const char *enhanced, const char *text, struct classification *out)
{
    /* classify_reply reads no further than these bounds, and reads a NULL
     * enhanced or text as an empty one: the key is exactly its input. */
    size_t en = enhanced ? strnlen(enhanced, CLASSIFY_CACHE_ENH) : 0;
    size_t tn = text ? strnlen(text, CLASSIFY_CACHE_TEXT + 1) : 0;

    if (en >= CLASSIFY_CACHE_ENH || tn > CLASSIFY_CACHE_TEXT) {
        classify_reply(p, code, enhanced, text, out);
        return;
    }
    if (cache->policy != p || cache->generation != generation) {
        for (size_t i = 0; i < CLASSIFY_CACHE_SLOTS; i++)
            cache->slots[i].used = false;
        cache->policy = p;
        cache->generation = generation;
    }
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)(unsigned)code;
    h = fnv1a(h, enhanced ? enhanced : "", en);
    h = fnv1a(h ^ 0xff, text ? text : "", tn);
    struct classify_cache_slot *s = &cache->slots[(h ^ (h >> 29)) % CLASSIFY_CACHE_SLOTS];
    if (s->used && s->hash == h && s->code == code && s->enh_len == en && s->text_len == tn &&
        (en == 0 || memcmp(s->enh, enhanced, en) == 0) && (tn == 0 || memcmp(s->text, text, tn) == 0)) {
        cache->hits++;
        *out = s->cls;
        return;
    }
    cache->misses++;
    classify_reply(p, code, enhanced, text, out);
    s->used = true;
    s->hash = h;
    s->code = code;
    s->enh_len = (uint8_t)en;
    s->text_len = (uint16_t)tn;
    if (en)
        memcpy(s->enh, enhanced, en);
    if (tn)
        memcpy(s->text, text, tn);
    s->cls = *out;
}
