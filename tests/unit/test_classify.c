/*
 * queue/classify.c against small inline policies (the mechanics: reading
 * the reply, the order of the rule tiers, the stated wait) and against the
 * SHIPPED config/policy.json with the table of real replies in
 * tests/unit/data/replies.tsv: every reply gets its expected class and
 * action, every shipped rule is reached by some reply, and no sender-side
 * reply is ever suppressed, whatever recipient code it is wrapped in.
 * Also checks that tests/fast-policy.json is the shipped policy with every
 * duration divided by 60,000 and the same rules.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/policy_load.h"
#include "queue/classify.h"

#include "random_model.h"

#define SHIPPED REBOUND_SOURCE_DIR "/config/policy.json"
#define FAST REBOUND_SOURCE_DIR "/tests/fast-policy.json"
#define TABLE REBOUND_SOURCE_DIR "/tests/unit/data/replies.tsv"

#define MIN (60 * 1000LL)
#define HOUR (60 * MIN)

static char err[1024];

/* A policy from text with ' for ", so policies read well in C. */
static struct policy *load(const char *single_quoted)
{
    static char buf[16384];
    size_t n = strlen(single_quoted);

    assert_true(n < sizeof(buf));
    for (size_t i = 0; i <= n; i++)
        buf[i] = single_quoted[i] == '\'' ? '"' : single_quoted[i];
    struct policy *p = policy_load_string(buf, n, "inline.json", err, sizeof(err));
    if (p == NULL)
        fail_msg("inline policy refused: %s", err);
    return p;
}

static struct policy *load_shipped(void)
{
    struct policy *p = policy_load_file(SHIPPED, err, sizeof(err));
    if (p == NULL)
        fail_msg("shipped policy refused: %s", err);
    return p;
}

/* The classes every test policy below has. */
#define CLASSES                                                                                          \
    "'classes': {"                                                                                       \
    "'temp_other': {'action': 'retry', 'delays': ['15m']},"                                              \
    "'hard_other': {'action': 'give_up'},"                                                               \
    "'a': {'action': 'retry', 'delays': ['1m']}, 'b': {'action': 'retry', 'delays': ['1m']},"            \
    "'c': {'action': 'retry', 'delays': ['1m']}, 'd': {'action': 'give_up'},"                            \
    "'s': {'action': {'4xx': 'retry', '5xx': 'suppress'}, 'delays': ['1m']}}"

static const char *class_of(const struct policy *p, const struct classification *c)
{
    return p->classes[c->class_idx].name;
}

static const char *rule_of(const struct policy *p, const struct classification *c)
{
    return c->rule_idx >= 0 ? p->rules[c->rule_idx].name : "-";
}

static void expect(const struct policy *p, int code, const char *enh, const char *text, const char *want_class)
{
    struct classification c;

    classify_reply(p, code, enh, text, &c);
    if (strcmp(class_of(p, &c), want_class) != 0)
        fail_msg("%d %s \"%s\": class %s (rule %s), want %s", code, enh ? enh : "-", text ? text : "(null)",
                 class_of(p, &c), rule_of(p, &c), want_class);
}

/* ---- the tiers ---- */

static void test_tiers(void **state)
{
    (void)state;
    struct policy *p = load("{" CLASSES ", 'rules': ["
                            "{'name': 'by-code', 'class': 'c', 'code': 550},"
                            "{'name': 'by-enh', 'class': 'b', 'enhanced': '5.1.1'},"
                            "{'name': 'by-text', 'class': 'a', 'text': 'rate limit'},"
                            "{'name': 'text-4xx', 'class': 'd', 'code': '4xx', 'text': 'only for 4xx'},"
                            "{'name': 'text-enh', 'class': 'd', 'enhanced': '4.7.*', 'text': 'needs 4.7'}]}");

    /* text beats enhanced, which beats the basic code, whatever the file order */
    expect(p, 550, "5.1.1", "550 5.1.1 recipient rate limit exceeded", "a");
    expect(p, 550, "5.1.1", "550 5.1.1 user unknown", "b");
    expect(p, 550, NULL, "550 user unknown", "c");
    /* a text rule's other conditions must hold too */
    expect(p, 550, NULL, "only for 4xx", "c");
    expect(p, 450, NULL, "only for 4xx", "d");
    expect(p, 450, "4.2.0", "needs 4.7", "temp_other");
    expect(p, 450, "4.7.1", "needs 4.7", "d");
    /* fallback by code; without a code, by the enhanced code's class digit */
    expect(p, 451, NULL, "something", "temp_other");
    expect(p, 554, NULL, "something", "hard_other");
    expect(p, 0, "4.4.4", "something", "temp_other");
    expect(p, 0, NULL, "something", "hard_other");
    expect(p, 0, NULL, NULL, "hard_other");

    struct classification c;
    classify_reply(p, 451, NULL, "x", &c);
    assert_int_equal(c.rule_idx, -1);
    classify_reply(p, 550, NULL, "rate limit", &c);
    assert_string_equal(p->rules[c.rule_idx].name, "by-text");
    policy_free(p);
}

static void test_enhanced_specificity(void **state)
{
    (void)state;
    /* The prefix rules come first in the file; the more specific still win. */
    struct policy *p = load("{" CLASSES ", 'rules': ["
                            "{'name': 'x7', 'class': 'a', 'enhanced': '4.7.*'},"
                            "{'name': 'x75', 'class': 'b', 'enhanced': '4.7.5*'},"
                            "{'name': 'x7-421', 'class': 'd', 'code': 421, 'enhanced': '4.7.*'},"
                            "{'name': 'x7-650', 'class': 'c', 'enhanced': '4.7.650'},"
                            "{'name': 'wide', 'class': 'a', 'code': '4xx'},"
                            "{'name': 'narrow', 'class': 'b', 'code': '45x'},"
                            "{'name': 'exact', 'class': 'c', 'code': 451}]}");

    expect(p, 451, "4.7.650", "", "c");
    expect(p, 451, "4.7.500", "", "b");
    expect(p, 451, "4.7.1", "", "a");
    expect(p, 421, "4.7.1", "", "d"); /* same prefix, narrower code range */
    expect(p, 451, "4.2.1", "", "c");
    expect(p, 452, "4.2.1", "", "b");
    expect(p, 421, "4.2.1", "", "a");
    expect(p, 550, "5.1.1", "", "hard_other");
    policy_free(p);
}

static void test_text_matching(void **state)
{
    (void)state;
    struct policy *p = load("{" CLASSES ", 'rules': ["
                            "{'class': 'a', 'text': 'Mailbox FULL'},"
                            "{'class': 'b', 'text': '/try again in [0-9]+ ?(s|sec|seconds)/'},"
                            "{'class': 'c', 'text': 'Postfach voll'},"
                            "{'class': 'd', 'text': '/^only this$/'},"
                            "{'class': 's', 'text': 'please try double-checking'}]}");

    expect(p, 552, NULL, "552 5.2.2 mailbox full", "a");
    expect(p, 552, NULL, "552 5.2.2 MAILBOX FuLL", "a");
    expect(p, 451, NULL, "451 TRY AGAIN IN 300 SECONDS", "b");
    expect(p, 552, NULL, "552 POSTFACH VOLL", "c");
    /* the reply is read without its code, so anchors see the prose */
    expect(p, 550, NULL, "550 only this", "d");
    expect(p, 550, NULL, "550 5.1.1 only this", "d");
    expect(p, 550, NULL, "550 not only this", "hard_other");
    /* words split over continuation lines still match */
    expect(p, 550, NULL,
           "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
           "550-5.1.1 double-checking the recipient's email address\r\n550 5.1.1 https://x - gsmtp",
           "s");
    expect(p, 550, NULL,
           "550-5.1.1 does not exist. Please try 550-5.1.1 double-checking the address 550 5.1.1 https://x", "s");
    expect(p, 0, NULL, "smtp; 550-5.1.1 Please\t try\n\n double-checking", "s");
    /* the last line without an enhanced code, after a first "550-" line */
    expect(p, 550, NULL, "550-please try\r\n550 double-checking", "s");
    /* a number in the prose is not a prefix */
    expect(p, 550, NULL, "550 please try 550 double-checking", "hard_other");
    /* addresses are data: their letters do not match patterns */
    struct policy *m = load("{" CLASSES ", 'rules': [{'class': 'd', 'text': 'rbl'}, {'class': 's', 'text': 'user unknown'}]}");
    expect(m, 550, NULL, "550 5.1.1 <marbles@example.com>: user unknown", "s");
    expect(m, 550, NULL, "550 5.1.1 user unknown: info@rbl.example", "s");
    expect(m, 550, NULL, "550 listed in an rbl", "d");
    policy_free(m);
    /* regular expressions: alternation, optional characters, brackets */
    struct policy *r = load("{" CLASSES ", 'rules': ["
                            "{'class': 'a', 'text': '/abc|xyz/'},"
                            "{'class': 'b', 'text': '/Colou?r/'},"
                            "{'class': 'c', 'text': '/qq[(|]|zz/'},"
                            "{'class': 'd', 'text': '/sender[^.]{0,20}(unknown|invalid)/'}]}");
    expect(r, 550, NULL, "550 xyz", "a");
    expect(r, 550, NULL, "550 abc", "a");
    expect(r, 550, NULL, "550 color", "b");
    expect(r, 550, NULL, "550 COLOUR", "b");
    expect(r, 550, NULL, "550 zz", "c");
    expect(r, 550, NULL, "550 qq(", "c");
    expect(r, 550, NULL, "550 Sender address invalid", "d");
    expect(r, 550, NULL, "550 the address is invalid", "hard_other");
    policy_free(r);
    /* UTF-8 is compared as written: a capital outside ASCII does not fold */
    struct policy *q = load("{" CLASSES ", 'rules': [{'class': 'a', 'text': 'пользователь'}]}");
    expect(q, 550, NULL, "550 пользователь не найден", "a");
    expect(q, 550, NULL, "550 Пользователь не найден", "hard_other");
    policy_free(q);
    policy_free(p);
}

/* ---- reading the codes ---- */

struct read_case {
    int code;
    const char *enh;
    const char *text;
    int want_code;
    const char *want_enh;
};

static void test_reading_codes(void **state)
{
    (void)state;
    static const struct read_case cases[] = {
        {550, "5.1.1", "user unknown", 550, "5.1.1"},
        {0, NULL, "550 5.1.1 user unknown", 550, "5.1.1"},
        {0, NULL, "550-5.7.26 unauthenticated 550 5.7.26 more", 550, "5.7.26"},
        {0, NULL, "smtp; 550 #5.1.0 Address rejected.", 550, "5.1.0"},
        {0, NULL, "SMTP;550 5.2.2 <a@b>... Mailbox Full", 550, "5.2.2"},
        {0, NULL, "X-Postfix; host mx said: 550 5.7.1 blocked", 0, "5.7.1"},
        {451, NULL, "451 #4.3.0 Mail server temporarily rejected message", 451, "4.3.0"},
        {450, NULL, "450 Requested mail action not taken (4.7.0)", 450, "4.7.0"},
        {450, NULL, "450 temporarily rejected [4.7.1] reason", 450, "4.7.1"},
        {452, NULL, "452 4.2.2 mailbox full", 452, "4.2.2"},
        {451, "", "qq temporary problem (#4.3.0)", 451, "4.3.0"},
        /* the field wins over the text; an invalid field is ignored */
        {550, "5.1.1", "550 5.7.1 relay denied", 550, "5.1.1"},
        {550, "5.8.1", "550 5.1.1 user unknown", 550, "5.1.1"},
        {550, "garbage", "user unknown", 550, ""},
        {550, "5.1.1.", "user unknown", 550, ""},
        /* class digit disagrees with the code: both kept */
        {550, NULL, "550 4.2.2 mailbox full", 550, "4.2.2"},
        /* things that are not enhanced codes */
        {421, NULL, "421 Messages from 192.0.2.44 deferred - 4.16.55.1", 421, ""},
        {550, NULL, "550 blocked 4.2.2.1 and 5.1.1.0", 550, ""},
        {550, NULL, "550 Exim 4.94.2 says no", 550, ""},
        {550, NULL, "550 version 3.1.1 and 4.8.1 and 5.1.1x", 550, ""},
        {550, NULL, "550 abc5.1.1 def", 550, ""},
        /* no code anywhere; a bad code is not a code */
        {0, NULL, "user unknown", 0, ""},
        {0, NULL, "5501 nonsense", 0, ""},
        {0, NULL, "550.1 nonsense", 0, ""},
        {999, NULL, "550 5.1.1 user unknown", 550, "5.1.1"},
        {0, NULL, NULL, 0, ""},
        {0, NULL, "", 0, ""},
    };
    struct policy *p = load("{" CLASSES "}");

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct read_case *k = &cases[i];
        struct classification c;
        classify_reply(p, k->code, k->enh, k->text, &c);
        if (c.code != k->want_code || strcmp(c.enhanced, k->want_enh) != 0)
            fail_msg("\"%s\": code %d enhanced \"%s\", want %d \"%s\"", k->text ? k->text : "(null)", c.code,
                     c.enhanced, k->want_code, k->want_enh);
    }
    policy_free(p);
}

static void test_long_text(void **state)
{
    (void)state;
    struct policy *p = load("{" CLASSES ", 'rules': [{'class': 'a', 'text': 'needle'}]}");
    size_t n = 20000;
    char *t = malloc(n + 1);
    struct classification c;

    assert_non_null(t);
    memset(t, 'x', n);
    memcpy(t, "550 5.1.1 ", 10);
    memcpy(t + 100, "needle", 6);
    t[n] = '\0';
    expect(p, 0, NULL, t, "a");
    classify_reply(p, 0, NULL, t, &c);
    assert_int_equal(c.code, 550);
    /* past the bounded copy a pattern is not seen (documented) */
    memcpy(t + 100, "xxxxxx", 6);
    memcpy(t + n - 10, "needle", 6);
    expect(p, 550, NULL, t, "hard_other");
    free(t);
    policy_free(p);
}

static void test_action(void **state)
{
    (void)state;
    struct policy *p = load("{" CLASSES "}");
    int s = policy_class_find(p, "s");

    assert_int_equal(classify_action(p, s, 450), ACTION_RETRY);
    assert_int_equal(classify_action(p, s, 499), ACTION_RETRY);
    assert_int_equal(classify_action(p, s, 550), ACTION_SUPPRESS);
    assert_int_equal(classify_action(p, s, 0), ACTION_SUPPRESS); /* unknown code: the 5xx column */
    assert_int_equal(classify_action(p, s, 399), ACTION_SUPPRESS);
    assert_int_equal(classify_action(p, -1, 450), ACTION_GIVE_UP);
    assert_int_equal(classify_action(p, p->nclasses, 450), ACTION_GIVE_UP);
    policy_free(p);
}

/* ---- the stated wait ---- */

static void test_stated_wait(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"451 4.7.1 Greylisting in action, please come back in 00:05:00", 5 * MIN},
        {"451 Please come back in 2 minutes", 2 * MIN},
        {"450 try again in 5 minutes", 5 * MIN},
        {"450 Try again in 1 hour.", HOUR},
        {"450 retry in 300 seconds", 300 * 1000},
        {"450 Retry after 60s", 60 * 1000},
        {"450 try again after 60s", 60 * 1000},
        {"450 wait 10 min", 10 * MIN},
        {"450 please wait at least 15 minutes before retrying", 15 * MIN},
        {"450 Greylisted for 300 seconds (see http://x/)", 300 * 1000},
        {"451 4.7.1 Greylisted, please try again in 180 seconds", 180 * 1000},
        {"421 rate limited for 2 hours", 2 * HOUR},
        {"421 try again in an hour", HOUR},
        {"421 try again in 1.5 hours", 90 * MIN},
        {"421 please retry in 05:00", 5 * MIN},
        {"421 Try again later, closing connection.", 0},
        {"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred - 4.16.55.1", 0},
        {"451 retry timeout exceeded", 0},
        {"451 try again in a few minutes", 0},
        {"451 deferred: connection timed out", 0},
        {"451 try again in 30 days", 0}, /* more than a week: not believed */
        {"550 user unknown", 0},
    };
    struct policy *p = load("{" CLASSES "}");

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct classification c;
        classify_reply(p, 0, NULL, cases[i].text, &c);
        if (c.stated_wait_ms != cases[i].ms)
            fail_msg("\"%s\": stated wait %lld ms, want %lld", cases[i].text, (long long)c.stated_wait_ms,
                     (long long)cases[i].ms);
    }
    policy_free(p);
}

/* ---- the table of real replies against the shipped policy ---- */

struct row {
    int line;
    int code;
    char enh[16];
    char cls[32];
    char action[32];
    char reason[16]; /* for suppress: "hard_invalid", or what follows "suppress:" in the table */
    char source[256];
    char text[4200];
};

/* Undoes the table's escapes (\n, \t, \\) in place. */
static void unescape(char *s)
{
    char *o = s;

    for (char *i = s; *i; i++) {
        if (*i == '\\' && (i[1] == 'n' || i[1] == 't' || i[1] == '\\')) {
            i++;
            *o++ = *i == 'n' ? '\n' : *i == 't' ? '\t' : '\\';
        } else {
            *o++ = *i;
        }
    }
    *o = '\0';
}

static void copy_field(char *dst, size_t cap, const char *src, int line)
{
    if (strlen(src) >= cap)
        fail_msg("replies.tsv:%d: field too long: %.40s", line, src);
    strcpy(dst, src);
}

/* Reads the table; returns the rows (malloc'd) and their number. */
static struct row *read_table(size_t *nrows)
{
    FILE *f = fopen(TABLE, "r");
    static char line[16384];
    struct row *rows = NULL;
    size_t n = 0, cap = 0;
    int lineno = 0;

    if (f == NULL)
        fail_msg("cannot open %s", TABLE);
    while (fgets(line, sizeof(line), f)) {
        char *field[6] = {0};
        int nf = 0;
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0' || line[0] == '#')
            continue;
        for (char *s = line; nf < 6; nf++) {
            field[nf] = s;
            char *tab = strchr(s, '\t');
            if (tab == NULL) {
                nf++;
                break;
            }
            *tab = '\0';
            s = tab + 1;
        }
        if (nf != 6)
            fail_msg("replies.tsv:%d: %d fields, want 6", lineno, nf);
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            rows = realloc(rows, cap * sizeof(*rows));
            assert_non_null(rows);
        }
        struct row *r = &rows[n++];
        r->line = lineno;
        r->code = atoi(field[0]);
        copy_field(r->enh, sizeof(r->enh), field[1], lineno);
        copy_field(r->cls, sizeof(r->cls), field[2], lineno);
        copy_field(r->action, sizeof(r->action), field[3], lineno);
        char *colon = strchr(r->action, ':');
        snprintf(r->reason, sizeof(r->reason), "%s", colon ? colon + 1 : "hard_invalid");
        if (colon)
            *colon = '\0';
        copy_field(r->source, sizeof(r->source), field[4], lineno);
        copy_field(r->text, sizeof(r->text), field[5], lineno);
        unescape(r->text);
    }
    fclose(f);
    *nrows = n;
    return rows;
}

static bool sender_side(const char *cls)
{
    static const char *const sides[] = {"auth_failure", "rate_limit", "reputation_block", "content_rejected",
                                        "hard_policy"};
    for (size_t i = 0; i < sizeof(sides) / sizeof(sides[0]); i++)
        if (strcmp(cls, sides[i]) == 0)
            return true;
    return false;
}

static void test_real_replies(void **state)
{
    (void)state;
    struct policy *p = load_shipped();
    size_t n, bad = 0;
    struct row *rows = read_table(&n);

    assert_true(n >= 200);
    for (size_t i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        struct classification c;
        classify_reply(p, r->code, r->enh[0] ? r->enh : NULL, r->text, &c);
        const char *got = class_of(p, &c);
        const char *act = action_name(classify_action(p, c.class_idx, c.code));
        const char *why = classify_reason(p, &c) == RULE_REASON_DISABLED ? "disabled" : "hard_invalid";
        if (policy_class_find(p, r->cls) < 0) {
            print_error("replies.tsv:%d: unknown class %s\n", r->line, r->cls);
            bad++;
        } else if (strcmp(got, r->cls) != 0 || strcmp(act, r->action) != 0) {
            print_error("replies.tsv:%d (%s): got %s/%s by rule %s, want %s/%s\n", r->line, r->source, got, act,
                        rule_of(p, &c), r->cls, r->action);
            bad++;
        } else if (strcmp(act, "suppress") == 0 && strcmp(why, r->reason) != 0) {
            print_error("replies.tsv:%d (%s): suppressed as %s by rule %s, want %s\n", r->line, r->source, why,
                        rule_of(p, &c), r->reason);
            bad++;
        }
    }
    free(rows);
    policy_free(p);
    if (bad)
        fail_msg("%zu of %zu real replies misclassified", bad, n);
}

/* Every rule of the shipped policy is needed by some real reply. A rule
 * with several code ranges is several policy rules with one name; the name
 * counts. Guard rules are the exception: a safety net for the replies no
 * other rule knows, so any table reply that reaches one is a gap in the
 * ordinary rules; test_sender_side_never_suppressed exercises them. */
static void test_every_rule_reached(void **state)
{
    (void)state;
    struct policy *p = load_shipped();
    size_t n, missing = 0;
    struct row *rows = read_table(&n);
    bool *hit = calloc(p->nrules, sizeof(*hit));

    assert_non_null(hit);
    for (size_t i = 0; i < n; i++) {
        struct classification c;
        classify_reply(p, rows[i].code, rows[i].enh[0] ? rows[i].enh : NULL, rows[i].text, &c);
        if (c.rule_idx >= 0)
            hit[c.rule_idx] = true;
    }
    for (size_t i = 0; i < p->nrules; i++) {
        bool named_hit = p->rules[i].guard;
        for (size_t j = 0; j < p->nrules; j++)
            if (hit[j] && strcmp(p->rules[j].name, p->rules[i].name) == 0)
                named_hit = true;
        if (!named_hit) {
            print_error("rule %s is reached by no reply in the table\n", p->rules[i].name);
            missing++;
        }
    }
    free(hit);
    free(rows);
    policy_free(p);
    if (missing)
        fail_msg("%zu shipped rules unreached", missing);
}

/* A sender-side reply (authentication, reputation, rate, content, policy)
 * must never suppress the address, whatever hard code it comes with and
 * however it names the recipient: providers wrap such replies in 5.1.1,
 * 5.2.1 and 550 ("codes that lie"), and MTAs put the recipient in front
 * ("<rcpt>: Recipient address rejected: ..."). Each such reply of the table
 * is tried again under every basic 5xx code that suppresses, with every
 * enhanced code the policy suppresses on (read from the policy, so a rule
 * added later is covered) and a few generic ones, bare and inside the
 * recipient wordings MTAs use. */
static void test_sender_side_never_suppressed(void **state)
{
    (void)state;
    static const int basics[] = {0, 500, 550, 551, 553, 554};
    static const char *const wraps[][2] = {
        {"", ""},
        {"<rcpt@example.com>: Recipient address rejected: ", ""},
        {"RCPT TO:<rcpt@example.com> rejected: ", " (in reply to RCPT TO command)"},
        {"Delivery to the following recipient failed permanently: rcpt@example.com. ", ""},
    };
    const char *enhs[64] = {NULL, "5.0.0", "5.1.0", "5.2.0", "5.7.1"};
    size_t nenh = 5;
    struct policy *p = load_shipped();
    size_t n, bad = 0, tried = 0, words = 0;
    struct row *rows = read_table(&n);
    static char text[sizeof(rows[0].text) + 256];

    /* every enhanced code a suppressing rule is keyed on */
    for (size_t i = 0; i < p->nrules && nenh < 64; i++) {
        const struct policy_rule *r = &p->rules[i];
        if (r->enhanced[0] != '5' || r->enhanced_prefix || r->guard ||
            classify_action(p, r->class_idx, 550) != ACTION_SUPPRESS)
            continue;
        enhs[nenh++] = r->enhanced;
    }
    assert_true(nenh >= 10);

    for (size_t i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        struct classification as_is;
        if (!sender_side(r->cls) || r->text[0] == '\0')
            continue;
        /* Only replies whose words make them sender-side: a terse "550 5.7.1"
         * is sender-side by its code alone (a rule keyed on the enhanced
         * code decided), and that code is what is replaced here. */
        classify_reply(p, r->code, r->enh[0] ? r->enh : NULL, r->text, &as_is);
        if (as_is.rule_idx < 0 || p->rules[as_is.rule_idx].ntexts == 0 || p->rules[as_is.rule_idx].enhanced[0] != '\0')
            continue;
        words++;
        for (size_t w = 0; w < sizeof(wraps) / sizeof(wraps[0]); w++) {
            snprintf(text, sizeof(text), "%s%s%s", wraps[w][0], r->text, wraps[w][1]);
            for (size_t k = 0; k < sizeof(basics) / sizeof(basics[0]); k++) {
                for (size_t e = 0; e < nenh; e++) {
                    struct classification c;
                    classify_reply(p, basics[k], enhs[e], text, &c);
                    tried++;
                    if (classify_action(p, c.class_idx, c.code) == ACTION_SUPPRESS) {
                        print_error("replies.tsv:%d (%s) under %d %s, wrapped %zu: suppressed by rule %s\n", r->line,
                                    r->source, basics[k], enhs[e] ? enhs[e] : "-", w, rule_of(p, &c));
                        bad++;
                    }
                }
            }
        }
    }
    free(rows);
    policy_free(p);
    assert_true(words > 100);
    assert_true(tried > 10000);
    if (bad)
        fail_msg("%zu sender-side replies suppressed", bad);
}

/* Guard rules: consulted only against a suppression, whatever decided it
 * (a text rule, an enhanced code, a basic code), first match in file order;
 * never otherwise. */
static void test_guards(void **state)
{
    (void)state;
    struct policy *p = load("{" CLASSES ", 'rules': ["
                            "{'name': 'g1', 'class': 'd', 'guard': true, 'text': ['your ip']},"
                            "{'name': 'unknown', 'class': 's', 'text': ['invalid recipient']},"
                            "{'name': 'gone', 'class': 's', 'reason': 'disabled', 'text': ['account disabled']},"
                            "{'name': 'code', 'class': 's', 'enhanced': '5.1.1'},"
                            "{'name': 'g2', 'class': 'b', 'guard': true, 'code': '5xx', 'text': ['too many', 'your ip']}]}");
    struct classification c;

    expect(p, 550, "5.1.1", "550 5.1.1 user unknown", "s");
    expect(p, 550, "5.1.1", "550 5.1.1 your IP is blocked", "d");          /* over an enhanced code */
    expect(p, 550, NULL, "550 too many invalid recipients from your ip", "d"); /* over a text rule, file order */
    expect(p, 550, NULL, "550 too many invalid recipients", "b");
    expect(p, 450, NULL, "450 invalid recipient, your ip", "s");    /* a retry: guards not consulted */
    expect(p, 550, NULL, "550 your ip", "hard_other");              /* nothing to guard against */
    classify_reply(p, 550, "5.1.1", "your ip", &c);
    assert_string_equal(rule_of(p, &c), "g1");
    assert_int_equal(classify_reason(p, &c), RULE_REASON_UNKNOWN);
    classify_reply(p, 550, NULL, "550 account disabled", &c);
    assert_int_equal(classify_reason(p, &c), RULE_REASON_DISABLED);
    classify_reply(p, 550, "5.1.1", "550 no such user", &c);
    assert_int_equal(classify_reason(p, &c), RULE_REASON_UNKNOWN);
    policy_free(p);

    /* The shipped guards hold a reply that names a suppression's code and
     * wording, but speaks of the sender, that no other rule knows. */
    p = load_shipped();
    expect(p, 550, "5.1.1", "550 5.1.1 <a@example.com>: Recipient address rejected: your IP is not welcome here",
           "hard_policy");
    expect(p, 550, "5.1.1", "550 5.1.1 invalid recipient; too many recipients this hour", "rate_limit");
    expect(p, 550, "5.1.1", "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown", "hard_invalid");
    policy_free(p);
}

/* ---- tests/fast-policy.json ---- */

static void step_equal(const struct policy_step *fast, const struct policy_step *slow, const char *cls, int k)
{
    if (fast->lo_ms * 60000 != slow->lo_ms || fast->hi_ms * 60000 != slow->hi_ms)
        fail_msg("fast-policy %s step %d: [%lld, %lld] ms, want [%lld, %lld] / 60000", cls, k, (long long)fast->lo_ms,
                 (long long)fast->hi_ms, (long long)slow->lo_ms, (long long)slow->hi_ms);
}

static void test_fast_policy(void **state)
{
    (void)state;
    struct policy *slow = load_shipped();
    struct policy *fast = policy_load_file(FAST, err, sizeof(err));

    if (fast == NULL)
        fail_msg("fast policy refused: %s", err);
    assert_int_equal(fast->max_attempts, slow->max_attempts);
    assert_int_equal(fast->max_age_ms * 60000, slow->max_age_ms);
    assert_int_equal(fast->max_age_ms, 4320); /* 72 h */
    assert_int_equal(fast->awaiting_ms * 60000, slow->awaiting_ms);
    assert_int_equal(fast->chronic_span_ms * 60000, slow->chronic_span_ms);
    assert_int_equal(fast->streak_campaigns, slow->streak_campaigns);
    assert_int_equal(fast->chronic_attempts, slow->chronic_attempts);
    assert_int_equal(fast->nclasses, slow->nclasses);
    assert_int_equal(fast->temp_other, slow->temp_other);
    assert_int_equal(fast->hard_other, slow->hard_other);
    for (int i = 0; i < slow->nclasses; i++) {
        const struct policy_class *f = &fast->classes[i], *s = &slow->classes[i];
        assert_string_equal(f->name, s->name);
        assert_int_equal(f->action_4xx, s->action_4xx);
        assert_int_equal(f->action_5xx, s->action_5xx);
        assert_int_equal(f->alert_4xx, s->alert_4xx);
        assert_int_equal(f->alert_5xx, s->alert_5xx);
        assert_int_equal(f->counts_streak, s->counts_streak);
        assert_int_equal(f->max_attempts, s->max_attempts);
        assert_int_equal(f->jitter_pct, s->jitter_pct);
        assert_int_equal(f->jitter_lo_ms * 60000, s->jitter_lo_ms);
        assert_int_equal(f->jitter_hi_ms * 60000, s->jitter_hi_ms);
        assert_int_equal(f->max_age_ms * 60000, s->max_age_ms);
        assert_int_equal(f->nsteps, s->nsteps);
        for (int k = 0; k < s->nsteps; k++)
            step_equal(&f->steps[k], &s->steps[k], s->name, k);
        assert_int_equal(f->learn.enabled, s->learn.enabled);
        assert_int_equal(f->learn.min_evidence, s->learn.min_evidence);
        assert_int_equal(f->learn.margin_pct, s->learn.margin_pct);
        assert_int_equal(f->learn.margin_ms * 60000, s->learn.margin_ms);
        assert_int_equal(f->learn.jitter_pct, s->learn.jitter_pct);
        assert_int_equal(f->learn.forget_ms * 60000, s->learn.forget_ms);
    }
    /* the same rules, so the same classification */
    assert_int_equal(fast->nrules, slow->nrules);
    for (size_t i = 0; i < slow->nrules; i++) {
        const struct policy_rule *f = &fast->rules[i], *s = &slow->rules[i];
        assert_string_equal(f->name, s->name);
        assert_int_equal(f->class_idx, s->class_idx);
        assert_int_equal(f->code_lo, s->code_lo);
        assert_int_equal(f->code_hi, s->code_hi);
        assert_string_equal(f->enhanced, s->enhanced);
        assert_int_equal(f->ntexts, s->ntexts);
        for (size_t t = 0; t < s->ntexts; t++)
            assert_string_equal(f->texts[t].pattern, s->texts[t].pattern);
    }
    /* learned timing is on for greylisting at least, in both */
    int g = policy_class_find(slow, "greylist");
    assert_true(g >= 0 && slow->classes[g].learn.enabled && fast->classes[g].learn.enabled);
    policy_free(fast);
    policy_free(slow);
}


/* ---- the cache ---- */

static void same_classification(const struct classification *a, const struct classification *b, int code,
                                const char *enh, const char *text)
{
    if (a->class_idx != b->class_idx || a->rule_idx != b->rule_idx || a->code != b->code ||
        strcmp(a->enhanced, b->enhanced) != 0 || a->stated_wait_ms != b->stated_wait_ms)
        fail_msg("cached and uncached differ for %d %s \"%.60s\" (seed %llu, op %zu): class %d/%d rule %d/%d "
                 "code %d/%d enhanced %s/%s wait %lld/%lld",
                 code, enh ? enh : "(null)", text ? text : "(null)", (unsigned long long)seed, op, a->class_idx,
                 b->class_idx, a->rule_idx, b->rule_idx, a->code, b->code, a->enhanced, b->enhanced,
                 (long long)a->stated_wait_ms, (long long)b->stated_wait_ms);
}

/* A text from the real table, cut, with a byte changed, or made up; the
 * pool is small enough that texts repeat, as in a campaign. */
static const char *pick_text(const struct row *rows, size_t nrows, char *buf, size_t cap)
{
    static const char *const made_up[] = {
        "greylisted", "Greylisted", "greylisted ", "try again in 5 minutes", "mailbox full", "user unknown",
        "", "4.7.1 greylisted", "550 5.1.1 <a@b.example>: user unknown", "retry after 60s please",
    };
    switch (rnd_below(6)) {
    case 0:
        return NULL;
    case 1:
        return made_up[rnd_below(sizeof made_up / sizeof made_up[0])];
    case 2: { /* a long one: around the cache's limit, or far past it */
        size_t n = CLASSIFY_CACHE_TEXT - 3 + rnd_below(8);
        if (rnd_below(4) == 0)
            n = 1000 + rnd_below(2000);
        if (n >= cap)
            n = cap - 1;
        for (size_t i = 0; i < n; i++)
            buf[i] = "abcdefgh greylisted try again in 10 minutes "[(i * 7 + n) % 44];
        buf[n] = '\0';
        return buf;
    }
    default: {
        const char *t = rows[rnd_below(nrows < 40 ? nrows : 40)].text; /* a few dozen texts, repeated */
        size_t n = strlen(t);
        if (n >= cap)
            n = cap - 1;
        memcpy(buf, t, n + 1);
        buf[n] = '\0';
        if (rnd_below(4) == 0 && n > 0)
            buf[rnd_below(n)] = "Xx5.\n "[rnd_below(6)];
        if (rnd_below(4) == 0)
            buf[rnd_below(n + 1)] = '\0';
        return buf;
    }
    }
}

static void test_cache_agrees(void **state)
{
    (void)state;
    static const int codes[] = {0, 199, 250, 421, 450, 451, 452, 454, 550, 552, 553, 554, 600, -1};
    static const char *const enhs[] = {NULL,    "",      "4.7.1", "5.1.1",  "4.2.2", "5.7.26", "4.7.*",
                                       "5.7.1", "x.y.z", "2.0.0", "4.7.1 ", "4.4.7.1.2.3.4.5.6.7.8.9"};
    static struct classify_cache cache; /* large: not on the stack */
    size_t nrows;
    struct row *rows = read_table(&nrows);
    struct policy *pols[2] = {load_shipped(), load("{" CLASSES ", 'rules': ["
                                                   "{'class': 'a', 'text': ['greylist']},"
                                                   "{'class': 'b', 'enhanced': '4.7.*'},"
                                                   "{'class': 'd', 'code': '5xx'}]}")};
    char buf[4096];
    uint64_t gen = 1;
    int which = 0;

    seed_from_env(0xc1a55);
    memset(&cache, 0, sizeof cache);
    for (op = 0; op < 200000; op++) {
        if (rnd_below(5000) == 0) {
            /* A reload: the other policy, or the same one reloaded. */
            gen++;
            if (rnd_below(2))
                which = !which;
        }
        int code = codes[rnd_below(sizeof codes / sizeof codes[0])];
        const char *enh = enhs[rnd_below(sizeof enhs / sizeof enhs[0])];
        const char *text = pick_text(rows, nrows, buf, sizeof buf);
        struct classification a, b;
        memset(&a, 0x5a, sizeof a);
        memset(&b, 0xa5, sizeof b);
        classify_cached(&cache, pols[which], gen, code, enh, text, &a);
        classify_reply(pols[which], code, enh, text, &b);
        same_classification(&a, &b, code, enh, text);
    }
    /* Slots were both reused and evicted along the way. */
    assert_true(cache.hits > 10000);
    assert_true(cache.misses > 10000);

    /* A campaign: one reply text over and over is read once. */
    uint64_t hits = cache.hits, misses = cache.misses;
    gen++;
    for (int i = 0; i < 1000; i++) {
        struct classification a;
        classify_cached(&cache, pols[0], gen, 451, "4.7.1", "greylisted", &a);
    }
    assert_int_equal(cache.misses - misses, 1);
    assert_int_equal(cache.hits - hits, 999);

    /* A policy freed and another loaded, possibly at the same address:
     * with a new generation the old results are never used. */
    struct classification a, b;
    classify_cached(&cache, pols[1], 100, 451, "4.7.1", "greylisted", &a);
    assert_string_equal(pols[1]->classes[a.class_idx].name, "a");
    policy_free(pols[1]);
    pols[1] = load("{" CLASSES ", 'rules': [{'class': 'c', 'text': ['greylist']}]}");
    classify_cached(&cache, pols[1], 101, 451, "4.7.1", "greylisted", &a);
    classify_reply(pols[1], 451, "4.7.1", "greylisted", &b);
    same_classification(&a, &b, 451, "4.7.1", "greylisted");
    assert_string_equal(pols[1]->classes[a.class_idx].name, "c");

    policy_free(pols[0]);
    policy_free(pols[1]);
    free(rows);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiers),
        cmocka_unit_test(test_enhanced_specificity),
        cmocka_unit_test(test_text_matching),
        cmocka_unit_test(test_reading_codes),
        cmocka_unit_test(test_long_text),
        cmocka_unit_test(test_action),
        cmocka_unit_test(test_stated_wait),
        cmocka_unit_test(test_real_replies),
        cmocka_unit_test(test_every_rule_reached),
        cmocka_unit_test(test_sender_side_never_suppressed),
        cmocka_unit_test(test_guards),
        cmocka_unit_test(test_fast_policy),
        cmocka_unit_test(test_cache_agrees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
