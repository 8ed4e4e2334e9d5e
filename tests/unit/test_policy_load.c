/*
 * config/policy_load.c and config/json_pos.c: good policies load with the
 * right values; every kind of mistake is refused with the file, line and
 * column of the value at fault and its path; json_pos finds values along
 * nested paths. Needs no policy file of the repo: the policies are inline
 * (written with ' for ", which J() turns back) or written to temp files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <regex.h>

#include <cmocka.h>

#include "config/explain.h"
#include "config/json_pos.h"
#include "config/policy_load.h"

#define MIN (60 * 1000LL)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static char err[1024];

/* The text with every ' turned into ", in a static buffer. */
static const char *J(const char *s)
{
    static char buf[8192];
    size_t n = strlen(s);

    assert_true(n < sizeof(buf));
    for (size_t i = 0; i <= n; i++)
        buf[i] = s[i] == '\'' ? '"' : s[i];
    return buf;
}

static struct policy *load(const char *single_quoted)
{
    const char *text = J(single_quoted);
    return policy_load_string(text, strlen(text), "policy.json", err, sizeof(err));
}

static struct policy *load_ok(const char *single_quoted)
{
    struct policy *p = load(single_quoted);
    if (p == NULL)
        fail_msg("refused: %s", err);
    return p;
}

/* Asserts the policy is refused with a message that starts with want. */
static void expect_error(const char *single_quoted, const char *want)
{
    struct policy *p = load(single_quoted);

    if (p != NULL) {
        policy_free(p);
        fail_msg("accepted, want error \"%s\"", want);
    }
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("\n got: %s\nwant: %s...", err, want);
}

/* The two fallback classes every policy needs, for tests about
 * something else. */
#define OTHERS "'temp_other': {'action': 'retry', 'delays': ['15m']}, 'hard_other': {'action': 'give_up'}"

static const char example[] =
    "{\n"
    "  'limits': {'max_attempts': 6, 'max_age': '48h', 'awaiting': '50h'},\n"
    "  'streak': {'campaigns': 7, 'chronic_span': '15d', 'chronic_attempts': 4},\n"
    "  'fallback': {'4xx': 'temp_soft', '5xx': 'hard_invalid'},\n"
    "  'classes': {\n"
    "    'greylist': {\n"
    "      'action': 'retry',\n"
    "      'delays': [['5m','30m'], ['30m','60m'], ['1h','2h']],\n"
    "      'counts_streak': false\n"
    "    },\n"
    "    'rate_limit': {'action': 'retry', 'delays': ['30m','1h','2h','4h'], 'jitter': '20%'},\n"
    "    'auth_failure': {'action': {'4xx': 'retry', '5xx': 'give_up'}, 'alert': true,\n"
    "                     'delays': ['1h','4h','12h','24h']},\n"
    "    'mailbox_full': {'action': 'retry', 'delays': ['12h','24h','36h'], 'max_attempts': 3,\n"
    "                     'counts_streak': true, 'max_age': '3d', 'jitter': ['-5m', '60s']},\n"
    "    'hard_invalid': {'action': 'suppress'},\n"
    "    'reputation_block': {'action': 'retry', 'delays': ['1h'], 'alert': {'5xx': true},\n"
    "                         'comment': ['provider temp blocks', 'see docs']},\n"
    "    'temp_soft': {'action': 'retry', 'delays': ['15m']},\n"
    "    'c23456789012345678901234567890x': {'action': {'4xx': 'give_up', '5xx': 'suppress'}}\n"
    "  },\n"
    "  'rules': [\n"
    "    {'name': 'postgrey', 'class': 'greylist', 'code': '4xx', 'text': ['GreyListed', '/try again in [0-9]+ ?(s|sec|seconds)/']},\n"
    "    {'name': 'dmarc', 'class': 'auth_failure', 'enhanced': '5.7.26'},\n"
    "    {'name': 'x7-prefix', 'class': 'reputation_block', 'code': [421, 450, 451], 'enhanced': '4.7.*'},\n"
    "    {'class': 'hard_invalid', 'code': 550, 'text': 'Benutzer UNBEKANNT \xc3\x84\xc3\xb6', 'comment': 'gmx'},\n"
    "    {'class': 'rate_limit', 'code': ['45x', 452, 421, 500, '5xx', 554], 'enhanced': '4.7.5*'}\n"
    "  ],\n"
    "  'comment': 'a test policy'\n"
    "}\n";

static void test_load_example(void **state)
{
    struct policy *p = load_ok(example);
    (void)state;

    assert_int_equal(p->max_attempts, 6);
    assert_int_equal(p->max_age_ms, 48 * HOUR);
    assert_int_equal(p->awaiting_ms, 50 * HOUR);
    assert_int_equal(p->streak_campaigns, 7);
    assert_int_equal(p->chronic_span_ms, 15 * DAY);
    assert_int_equal(p->chronic_attempts, 4);

    /* Classes keep file order. */
    assert_int_equal(p->nclasses, 8);
    const char *names[] = {"greylist", "rate_limit", "auth_failure", "mailbox_full", "hard_invalid",
                           "reputation_block", "temp_soft", "c23456789012345678901234567890x"};
    for (int i = 0; i < 8; i++)
        assert_string_equal(p->classes[i].name, names[i]);
    assert_int_equal(p->temp_other, 6);
    assert_int_equal(p->hard_other, 4);

    const struct policy_class *g = &p->classes[0];
    assert_int_equal(g->action_4xx, ACTION_RETRY);
    assert_int_equal(g->action_5xx, ACTION_RETRY);
    assert_int_equal(g->nsteps, 3);
    assert_int_equal(g->steps[0].lo_ms, 5 * MIN);
    assert_int_equal(g->steps[0].hi_ms, 30 * MIN);
    assert_int_equal(g->steps[1].lo_ms, 30 * MIN);
    assert_int_equal(g->steps[1].hi_ms, 60 * MIN);
    assert_int_equal(g->steps[2].lo_ms, HOUR);
    assert_int_equal(g->steps[2].hi_ms, 2 * HOUR);
    assert_false(g->counts_streak);
    assert_false(g->alert_4xx || g->alert_5xx);
    assert_int_equal(g->jitter_pct, 0);
    assert_int_equal(g->max_attempts, 0); /* 0: the policy's */
    assert_int_equal(g->max_age_ms, 0);

    const struct policy_class *r = &p->classes[1];
    assert_int_equal(r->nsteps, 4);
    assert_int_equal(r->steps[3].lo_ms, 4 * HOUR);
    assert_int_equal(r->steps[3].hi_ms, 4 * HOUR);
    assert_int_equal(r->jitter_pct, 20);

    const struct policy_class *a = &p->classes[2];
    assert_int_equal(a->action_4xx, ACTION_RETRY);
    assert_int_equal(a->action_5xx, ACTION_GIVE_UP);
    assert_true(a->alert_4xx && a->alert_5xx);

    const struct policy_class *m = &p->classes[3];
    assert_int_equal(m->max_attempts, 3);
    assert_int_equal(m->max_age_ms, 3 * DAY);
    assert_true(m->counts_streak);
    assert_int_equal(m->jitter_pct, 0);
    assert_int_equal(m->jitter_lo_ms, -5 * MIN);
    assert_int_equal(m->jitter_hi_ms, 60 * 1000);

    const struct policy_class *h = &p->classes[4];
    assert_int_equal(h->action_4xx, ACTION_SUPPRESS);
    assert_int_equal(h->action_5xx, ACTION_SUPPRESS);
    assert_int_equal(h->nsteps, 0);

    assert_false(p->classes[5].alert_4xx);
    assert_true(p->classes[5].alert_5xx);
    assert_int_equal(p->classes[7].action_4xx, ACTION_GIVE_UP);
    assert_int_equal(p->classes[7].action_5xx, ACTION_SUPPRESS);

    /* Rules: x7-prefix's codes 421, 450, 451 become two rules (421 and
     * 450-451); the last rule's codes merge into 421, 450-459, 500-599. */
    assert_int_equal(p->nrules, 8);
    const struct policy_rule *pg = &p->rules[0];
    assert_string_equal(pg->name, "postgrey");
    assert_int_equal(pg->class_idx, 0);
    assert_int_equal(pg->code_lo, 400);
    assert_int_equal(pg->code_hi, 499);
    assert_string_equal(pg->enhanced, "");
    assert_int_equal(pg->ntexts, 2);
    assert_false(pg->texts[0].is_regex);
    assert_string_equal(pg->texts[0].pattern, "greylisted");
    assert_null(pg->texts[0].regex);
    assert_true(pg->texts[1].is_regex);
    assert_string_equal(pg->texts[1].pattern, "try again in [0-9]+ ?(s|sec|seconds)");
    assert_non_null(pg->texts[1].regex);
    assert_int_equal(regexec(pg->texts[1].regex, "451 4.7.1 Please TRY AGAIN IN 300 Seconds", 0, NULL, 0), 0);
    assert_int_equal(regexec(pg->texts[1].regex, "451 try again later", 0, NULL, 0), REG_NOMATCH);

    const struct policy_rule *dm = &p->rules[1];
    assert_string_equal(dm->name, "dmarc");
    assert_int_equal(dm->class_idx, 2);
    assert_int_equal(dm->code_lo, 0);
    assert_int_equal(dm->code_hi, 0);
    assert_string_equal(dm->enhanced, "5.7.26");
    assert_false(dm->enhanced_prefix);
    assert_int_equal(dm->enhanced_len, 6);
    assert_int_equal(dm->ntexts, 0);

    for (int i = 2; i <= 3; i++) {
        assert_string_equal(p->rules[i].name, "x7-prefix");
        assert_int_equal(p->rules[i].class_idx, 5);
        assert_string_equal(p->rules[i].enhanced, "4.7.*");
        assert_true(p->rules[i].enhanced_prefix);
        assert_int_equal(p->rules[i].enhanced_len, 4);
    }
    assert_int_equal(p->rules[2].code_lo, 421);
    assert_int_equal(p->rules[2].code_hi, 421);
    assert_int_equal(p->rules[3].code_lo, 450);
    assert_int_equal(p->rules[3].code_hi, 451);

    const struct policy_rule *gmx = &p->rules[4];
    assert_string_equal(gmx->name, "rule#3");
    assert_int_equal(gmx->code_lo, 550);
    assert_int_equal(gmx->code_hi, 550);
    assert_int_equal(gmx->ntexts, 1);
    /* ASCII lowered, UTF-8 bytes as they were. */
    assert_string_equal(gmx->texts[0].pattern, "benutzer unbekannt \xc3\x84\xc3\xb6");

    int want[][2] = {{421, 421}, {450, 459}, {500, 599}};
    for (int i = 0; i < 3; i++) {
        const struct policy_rule *rl = &p->rules[5 + i];
        assert_string_equal(rl->name, "rule#4");
        assert_int_equal(rl->code_lo, want[i][0]);
        assert_int_equal(rl->code_hi, want[i][1]);
        assert_true(rl->enhanced_prefix);
        assert_int_equal(rl->enhanced_len, 5);
    }
    policy_free(p);
}

static void test_defaults(void **state)
{
    struct policy *p = load_ok("{'classes': {" OTHERS "}}");
    (void)state;

    assert_int_equal(p->max_attempts, 8);
    assert_int_equal(p->max_age_ms, 72 * HOUR);
    assert_int_equal(p->awaiting_ms, 72 * HOUR);
    assert_int_equal(p->streak_campaigns, 3);
    assert_int_equal(p->chronic_span_ms, 30 * DAY);
    assert_int_equal(p->chronic_attempts, 5);
    assert_int_equal(p->temp_other, 0);
    assert_int_equal(p->hard_other, 1);
    assert_int_equal(p->nrules, 0);
    assert_false(p->classes[0].counts_streak);
    policy_free(p);

    /* awaiting follows max_age when not given. */
    p = load_ok("{'limits': {'max_age': '24h'}, 'classes': {" OTHERS "}, 'rules': []}");
    assert_int_equal(p->max_age_ms, 24 * HOUR);
    assert_int_equal(p->awaiting_ms, 24 * HOUR);
    policy_free(p);

    /* One fallback named, the other by default. */
    p = load_ok("{'fallback': {'5xx': 'x'}, 'classes': {'x': {'action': 'give_up'}, " OTHERS "}}");
    assert_int_equal(p->hard_other, 0);
    assert_int_equal(p->temp_other, 1);
    policy_free(p);
}

/* Every kind of mistake, with the position of the value (or key) at
 * fault. */
static void test_error_syntax(void **state)
{
    (void)state;
    /* jansson's own messages and positions (the end of the bad token). */
    expect_error("{\n  'classes': {}\n  'rules': []\n}", "policy.json:3:9: '}' expected near '\"rules\"'");
    expect_error("{\n  'classes': {},\n  'classes': {}\n}", "policy.json:3:11: duplicate object key");
    expect_error("", "policy.json:1:1: '[' or '{' expected near end of file");
    expect_error("{'classes': {" OTHERS "}} x", "policy.json:1:");
    expect_error("[]", "policy.json:1:1: expected an object, got an array");
}

static void test_error_unknown_key(void **state)
{
    (void)state;
    expect_error("{\n  'clases': {}\n}",
                 "policy.json:2:3: clases: unknown key \"clases\" (expected limits, streak, fallback, classes, rules, domains)");
    expect_error("{'classes': {\n"
                 "  'temp_other': {'action': 'retry', 'delay': ['15m']},\n"
                 "  'hard_other': {'action': 'give_up'}}}",
                 "policy.json:2:37: classes.temp_other.delay: unknown key \"delay\" (expected action, alert, delays,");
    expect_error("{'limits': {'max_age': '1h', 'maxage': '2h'}, 'classes': {" OTHERS "}}",
                 "policy.json:1:30: limits.maxage: unknown key \"maxage\"");
    expect_error("{'classes': {" OTHERS "},\n"
                 " 'rules': [{'class': 'temp_other', 'code': 421},\n"
                 "           {'clas': 'temp_other', 'code': 421}]}",
                 "policy.json:3:13: rules[1].clas: unknown key \"clas\" (expected name, class, code, enhanced, text, guard, reason)");
    expect_error("{'classes': {'x': {'action': {'4xx': 'retry', '5xxx': 'retry'}, 'delays': ['1m']}, " OTHERS "}}",
                 "policy.json:1:47: classes.x.action.5xxx: unknown key \"5xxx\" (expected 4xx, 5xx)");
    expect_error("{'fallback': {'4xx': 'temp_other', 'xxx': 'a'}, 'classes': {" OTHERS "}}",
                 "policy.json:1:36: fallback.xxx: unknown key");
}

static void test_error_wrong_type(void **state)
{
    (void)state;
    expect_error("{\n  'limits': {'max_attempts': '8'},\n  'classes': {" OTHERS "}}",
                 "policy.json:2:30: limits.max_attempts: expected an integer, got a string");
    expect_error("{'limits': {'max_attempts': 8.0}, 'classes': {" OTHERS "}}",
                 "policy.json:1:29: limits.max_attempts: expected an integer, got a number with a fraction");
    expect_error("{'limits': {'max_attempts': 0}, 'classes': {" OTHERS "}}",
                 "policy.json:1:29: limits.max_attempts: 0 is out of range (1..100)");
    expect_error("{'streak': {'campaigns': 3, 'chronic_span': 30}, 'classes': {" OTHERS "}}",
                 "policy.json:1:45: streak.chronic_span: expected a duration such as \"5m\", got an integer");
    expect_error("{'classes': {'x': {'action': 'give_up', 'counts_streak': 'yes'}, " OTHERS "}}",
                 "policy.json:1:58: classes.x.counts_streak: expected true or false, got a string");
    expect_error("{'classes': []}", "policy.json:1:13: classes: expected an object of classes, got an array");
    expect_error("{'classes': {'x': 'retry', " OTHERS "}}", "policy.json:1:19: classes.x: expected an object, got a string");
    expect_error("{'classes': {" OTHERS "}, 'rules': {}}", "policy.json:1:115: rules: expected an array of rules");
    expect_error("{'classes': {" OTHERS "}, 'rules': [421]}",
                 "policy.json:1:116: rules[0]: expected a rule object, got an integer");
    expect_error("{'classes': {" OTHERS "}, 'comment': 5}", "policy.json:1:117: comment: expected a string");
    expect_error("{'classes': {'x': {'action': 'retyr', 'delays': ['1m']}, " OTHERS "}}",
                 "policy.json:1:30: classes.x.action: bad action \"retyr\" (use retry, give_up or suppress)");
    expect_error("{'classes': {'x': {'action': {'4xx': 'retry'}, 'delays': ['1m']}, " OTHERS "}}",
                 "policy.json:1:30: classes.x.action: give both \"4xx\" and \"5xx\"");
    expect_error("{'classes': {'x': {'action': {'4xx': 'retry', '5xx': 1}, 'delays': ['1m']}, " OTHERS "}}",
                 "policy.json:1:54: classes.x.action.5xx: expected retry, give_up or suppress, got an integer");
    expect_error("{'classes': {'x': {'alert': 1, 'action': 'give_up'}, " OTHERS "}}",
                 "policy.json:1:29: classes.x.alert: expected true, false or");
    expect_error("{'classes': {'x': {'delays': ['1m']}, " OTHERS "}}",
                 "policy.json:1:19: classes.x: \"action\" is required");
}

static void test_error_duration(void **state)
{
    (void)state;
    expect_error("{'classes': {\n"
                 "  'greylist': {\n"
                 "    'action': 'retry',\n"
                 "    'delays': [['5m', '30m'], ['30m', '5x']]},\n"
                 "  " OTHERS "}}",
                 "policy.json:4:39: classes.greylist.delays[1][1]: bad duration \"5x\" (use e.g. 250ms, 5m, 4h, 3d)");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['1h', '5 m']}, " OTHERS "}}",
                 "policy.json:1:56: classes.g.delays[1]: bad duration \"5 m\" (use e.g. 250ms, 5m, 4h, 3d)");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['-5m']}, " OTHERS "}}",
                 "policy.json:1:50: classes.g.delays[0]: bad duration \"-5m\"");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': [['30m', '5m']]}, " OTHERS "}}",
                 "policy.json:1:50: classes.g.delays[0]: the window ends before it starts");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': [['5m']]}, " OTHERS "}}",
                 "policy.json:1:50: classes.g.delays[0]: expected a duration (\"30m\") or a window");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': []}, " OTHERS "}}",
                 "policy.json:1:49: classes.g.delays: give 1 to 16 delays");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['3651d']}, " OTHERS "}}",
                 "policy.json:1:50: classes.g.delays[0]: duration \"3651d\" is too long (at most 3650d)");
    expect_error("{'limits': {'max_age': '0s'}, 'classes': {" OTHERS "}}",
                 "policy.json:1:24: limits.max_age: must be at least 1ms");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['1m'], 'jitter': '20'}, " OTHERS "}}",
                 "policy.json:1:67: classes.g.jitter: bad jitter \"20\" (use a whole percentage 0%..100%");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['1m'], 'jitter': '101%'}, " OTHERS "}}",
                 "policy.json:1:67: classes.g.jitter: bad jitter \"101%\"");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['1m'], 'jitter': ['-5m', '-1s']}, " OTHERS "}}",
                 "policy.json:1:75: classes.g.jitter[1]: the high end of a jitter window cannot be negative");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['1m'], 'jitter': ['-5m', '5x']}, " OTHERS "}}",
                 "policy.json:1:75: classes.g.jitter[1]: bad duration \"5x\"");
}

static void test_error_class(void **state)
{
    (void)state;
    expect_error("{'classes': {\n  " OTHERS ",\n  'Greylist': {'action': 'give_up'}}}",
                 "policy.json:3:3: classes.Greylist: bad class name \"Greylist\" (a-z, 0-9 and _, starting with a "
                 "letter, at most 31 characters)");
    expect_error("{'classes': {'1x': {'action': 'give_up'}, " OTHERS "}}", "policy.json:1:14: classes.1x: bad class name");
    expect_error("{'classes': {'grey-list': {'action': 'give_up'}, " OTHERS "}}",
                 "policy.json:1:14: classes.grey-list: bad class name");
    expect_error("{'classes': {'c23456789012345678901234567890xy': {'action': 'give_up'}, " OTHERS "}}",
                 "policy.json:1:14: classes.c23456789012345678901234567890xy: bad class name");
    /* Settings that only a retrying class can use, and the one it must have. */
    expect_error("{'classes': {'h': {'action': 'suppress', 'delays': ['1h']}, " OTHERS "}}",
                 "policy.json:1:42: classes.h.delays: only allowed in a class whose action is retry");
    expect_error("{'classes': {'h': {'action': 'give_up', 'max_attempts': 3}, " OTHERS "}}",
                 "policy.json:1:41: classes.h.max_attempts: only allowed in a class whose action is retry");
    expect_error("{'classes': {'h': {'action': {'4xx': 'retry', '5xx': 'give_up'}}, " OTHERS "}}",
                 "policy.json:1:19: classes.h: \"delays\" is required in a class whose action is retry");
    expect_error("{'classes': {'h': {'action': 'retry', 'delays': ['1h'], 'max_attempts': 101}, " OTHERS "}}",
                 "policy.json:1:73: classes.h.max_attempts: 101 is out of range (1..100)");
}

/* A class's "learn" object: defaults, both margin forms, strict errors. */
static void test_learn(void **state)
{
    (void)state;
    struct policy *p = load_ok("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {}}, " OTHERS "}}");
    const struct policy_learn *l = &p->classes[0].learn;
    assert_true(l->enabled);
    assert_int_equal(l->min_evidence, 3);
    assert_int_equal(l->margin_pct, 10);
    assert_int_equal(l->margin_ms, 0);
    assert_int_equal(l->jitter_pct, 10);
    assert_int_equal(l->forget_ms, 7LL * 86400 * 1000);
    assert_false(p->classes[1].learn.enabled); /* no object: off */
    policy_free(p);
    p = load_ok("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'enabled': false, 'min_evidence': 10,"
                " 'margin': '90s', 'jitter': '0%', 'forget_after': '0', 'comment': 'x'}}, " OTHERS "}}");
    l = &p->classes[0].learn;
    assert_false(l->enabled);
    assert_int_equal(l->min_evidence, 10);
    assert_int_equal(l->margin_pct, 0);
    assert_int_equal(l->margin_ms, 90000);
    assert_int_equal(l->jitter_pct, 0);
    assert_int_equal(l->forget_ms, 0);
    policy_free(p);

    expect_error("{'classes': {'h': {'action': 'give_up', 'learn': {}}, " OTHERS "}}",
                 "policy.json:1:41: classes.h.learn: only allowed in a class whose action is retry");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'min_evidance': 3}}, " OTHERS "}}",
                 "policy.json:1:67: classes.g.learn.min_evidance: unknown key \"min_evidance\"");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'min_evidence': 0}}, " OTHERS "}}",
                 "policy.json:1:83: classes.g.learn.min_evidence: 0 is out of range (1..1000)");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'margin': '110%'}}, " OTHERS "}}",
                 "policy.json:1:77: classes.g.learn.margin: bad margin \"110%\" (use a whole percentage 0%..100%)");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'margin': 'soon'}}, " OTHERS "}}",
                 "policy.json:1:77: classes.g.learn.margin: bad duration \"soon\"");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'jitter': ['1s', '2s']}}, " OTHERS "}}",
                 "policy.json:1:77: classes.g.learn.jitter: expected a percentage such as \"10%\", got an array");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': {'enabled': 'yes'}}, " OTHERS "}}",
                 "policy.json:1:78: classes.g.learn.enabled: expected true or false");
    expect_error("{'classes': {'g': {'action': 'retry', 'delays': ['5m'], 'learn': true}, " OTHERS "}}",
                 "policy.json:1:66: classes.g.learn: expected an object");
}

static void test_error_fallback(void **state)
{
    (void)state;
    expect_error("{\n  'classes': {\n    'hard_other': {'action': 'give_up'}}}",
                 "policy.json:2:14: classes: no class \"temp_other\" for 4xx replies that no rule matches");
    expect_error("{'classes': {'temp_other': {'action': 'retry', 'delays': ['1m']}}}",
                 "policy.json:1:13: classes: no class \"hard_other\" for 5xx replies that no rule matches");
    expect_error("{'fallback': {'4xx': 'soft'},\n 'classes': {" OTHERS "}}",
                 "policy.json:1:22: fallback.4xx: unknown class \"soft\" (not defined under \"classes\")");
    expect_error("{'fallback': {'5xx': 5}, 'classes': {" OTHERS "}}",
                 "policy.json:1:22: fallback.5xx: expected a class name, got an integer");
}

static void test_error_rules(void **state)
{
    (void)state;
    /* Unknown class in a rule. */
    expect_error("{'classes': {" OTHERS "},\n"
                 " 'rules': [\n"
                 "  {'name': 'a', 'class': 'temp_other', 'code': 421},\n"
                 "  {'name': 'b', 'class': 'greylist', 'code': 451}]}",
                 "policy.json:4:26: rules[1].class: unknown class \"greylist\" (not defined under \"classes\")");
    /* Bad regex. */
    expect_error("{'classes': {" OTHERS "},\n"
                 " 'rules': [{'class': 'temp_other', 'text': ['greylisted',\n"
                 "                                           '/try again in [0-9+/']}]}",
                 "policy.json:3:44: rules[0].text[1]: bad regular expression \"/try again in [0-9+/\": ");
    /* Repetitions that the C library would copy out into gigabytes. */
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': '/x{255}{255}/'}]}",
                 "policy.json:2:44: rules[0].text: regular expression \"/x{255}{255}/\" is too large");
    {
        /* Each under the budget of one pattern, together past the policy's. */
        static char big[8192];
        size_t n = (size_t)snprintf(big, sizeof big, "{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': [");
        for (int i = 0; i < 20; i++)
            n += (size_t)snprintf(big + n, sizeof big - n, "%s'/[a-z]{4000}%d/'", i ? ", " : "", i);
        snprintf(big + n, sizeof big - n, "]}]}");
        expect_error(big, "policy.json:2:");
        assert_non_null(strstr(err, "takes the policy's expressions past 65536 positions"));
        assert_non_null(strstr(err, "rules[0].text[16]"));
    }
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': '/(a*)*\\\\1/'}]}",
                 "policy.json:2:44: rules[0].text: regular expression \"/(a*)*\\1/\" has a back-reference");
    struct policy *fits = load_ok("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', "
                                  "'text': '/try again in [0-9]{1,3} (min|minutes)/'}]}");
    policy_free(fits);
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': '//'}]}",
                 "policy.json:2:44: rules[0].text: an empty regular expression matches everything");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': ''}]}",
                 "policy.json:2:44: rules[0].text: an empty text matches everything");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': []}]}",
                 "policy.json:2:44: rules[0].text: an empty array of texts matches nothing");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': ['a', 5]}]}",
                 "policy.json:2:50: rules[0].text[1]: expected a text");
    /* Empty rule: it would match everything. */
    expect_error("{'classes': {" OTHERS "},\n 'rules': [\n  {'name': 'catch-all', 'class': 'temp_other'}]}",
                 "policy.json:3:3: rules[0]: a rule needs at least one of \"code\", \"enhanced\", \"text\"");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'code': 421}]}",
                 "policy.json:2:12: rules[0]: \"class\" is required");
    /* Codes. */
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': 600}]}",
                 "policy.json:2:44: rules[0].code: code 600 is out of range (200..599)");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': [421, '6xx']}]}",
                 "policy.json:2:50: rules[0].code[1]: bad code \"6xx\" (use a number like 421, or \"4xx\", \"45x\")");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': '4x'}]}",
                 "policy.json:2:44: rules[0].code: bad code \"4x\"");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': '421'}]}",
                 "policy.json:2:44: rules[0].code: bad code \"421\"");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': []}]}",
                 "policy.json:2:44: rules[0].code: an empty array of codes matches nothing");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': [[421]]}]}",
                 "policy.json:2:45: rules[0].code[0]: expected a code, got an array");
    /* Enhanced codes. */
    const char *bad_enhanced[] = {"4.7", "X.7.1", "4.7.1.2", "4.7777.1", "44.7.1", "3.7.1", "4..1", "*",
                                  "4.7.1*2", "4.7.*.1", "", "4.7.1 ", "4.7.12345*"};
    for (size_t i = 0; i < sizeof(bad_enhanced) / sizeof(bad_enhanced[0]); i++) {
        char text[512], want[256];
        snprintf(text, sizeof(text), "{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'enhanced': '%s'}]}",
                 bad_enhanced[i]);
        snprintf(want, sizeof(want), "policy.json:2:48: rules[0].enhanced: bad enhanced code \"%s\"", bad_enhanced[i]);
        expect_error(text, want);
    }
    const char *good_enhanced[] = {"4.7.1", "5.7.26", "2.0.0", "4.*", "4.7*", "4.7.*", "4.7.5*", "5.1.10", "5.123.456"};
    for (size_t i = 0; i < sizeof(good_enhanced) / sizeof(good_enhanced[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), "{'classes': {" OTHERS "}, 'rules': [{'class': 'temp_other', 'enhanced': '%s'}]}",
                 good_enhanced[i]);
        struct policy *p = load_ok(text);
        assert_string_equal(p->rules[0].enhanced, good_enhanced[i]);
        assert_int_equal(p->rules[0].enhanced_len, strcspn(good_enhanced[i], "*"));
        assert_int_equal(p->rules[0].enhanced_prefix, strchr(good_enhanced[i], '*') != NULL);
        policy_free(p);
    }
    /* Guards and reasons. */
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'code': 550, 'guard': true}]}",
                 "policy.json:2:58: rules[0].guard: a guard rule needs \"text\"");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': 'x', 'guard': 1}]}",
                 "policy.json:2:58: rules[0].guard: expected true or false, got an integer");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'class': 'temp_other', 'text': 'x', 'reason': 'gone'}]}",
                 "policy.json:2:59: rules[0].reason: unknown reason \"gone\" (use hard_invalid or disabled)");
    {
        struct policy *p = load_ok("{'classes': {" OTHERS "}, 'rules': [{'class': 'temp_other', 'text': 'x', 'guard': true,"
                                   " 'reason': 'disabled'}, {'class': 'temp_other', 'text': 'y', 'reason': 'hard_invalid'}]}");
        assert_true(p->rules[0].guard);
        assert_int_equal(p->rules[0].reason, RULE_REASON_DISABLED);
        assert_false(p->rules[1].guard);
        assert_int_equal(p->rules[1].reason, RULE_REASON_UNKNOWN);
        policy_free(p);
    }
    /* Names. */
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'name': 'a', 'class': 'temp_other', 'code': 421},\n"
                 "  {'name': 'a', 'class': 'temp_other', 'code': 450}]}",
                 "policy.json:3:12: rules[1].name: duplicate rule name \"a\"");
    expect_error("{'classes': {" OTHERS "},\n 'rules': [{'name': '', 'class': 'temp_other', 'code': 421}]}",
                 "policy.json:2:21: rules[0].name: a rule name has 1 to 64 characters");
}

/* The loader's errors name the file as given, and files load like text. */
static void test_load_file(void **state)
{
    const char *dir = getenv("TMPDIR");
    char path[512];
    struct policy *p;
    (void)state;

    snprintf(path, sizeof(path), "%s/test_policy_load.XXXXXX", dir ? dir : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = J("{'classes': {" OTHERS "},\n 'rules': [{'class': 'hard_other', 'code': 'x'}]}");
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    p = policy_load_file(path, err, sizeof(err));
    assert_null(p);
    char want[600];
    snprintf(want, sizeof(want), "%s:2:44: rules[0].code: bad code \"x\"", path);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("\n got: %s\nwant: %s", err, want);

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(J(example), f);
    fclose(f);
    p = policy_load_file(path, err, sizeof(err));
    if (p == NULL)
        fail_msg("refused: %s", err);
    assert_int_equal(p->nclasses, 8);
    assert_int_equal(p->nrules, 8);
    policy_free(p);
    unlink(path);

    p = policy_load_file(path, err, sizeof(err));
    assert_null(p);
    snprintf(want, sizeof(want), "%s: No such file or directory", path);
    assert_string_equal(err, want);
}

/* A short error buffer gets a truncated, terminated message. */
static void test_short_err_buffer(void **state)
{
    char small[12];
    const char *text = J("{'clases': {}}");
    (void)state;

    memset(small, 'X', sizeof(small));
    assert_null(policy_load_string(text, strlen(text), "policy.json", small, sizeof(small)));
    assert_string_equal(small, "policy.json");
    assert_null(policy_load_string(text, strlen(text), "policy.json", NULL, 0));
}

static json_int_t int_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

/* explain_classification reports the policy's view of a classified reply;
 * the forecast comes from decide_forecast. */
static void test_explain(void **state)
{
    struct policy *p = load_ok(example);
    struct classification c = {.class_idx = 0, .rule_idx = 0, .code = 451, .enhanced = "4.7.1", .stated_wait_ms = 0};
    json_t *o;
    (void)state;

    /* greylist: windows, no jitter: cumulative 5-30m, 35-90m, 95-210m. */
    o = explain_classification(p, &c);
    assert_string_equal(json_string_value(json_object_get(o, "class")), "greylist");
    assert_string_equal(json_string_value(json_object_get(o, "action")), "retry");
    assert_string_equal(json_string_value(json_object_get(o, "rule")), "postgrey");
    assert_int_equal(int_at(o, "code"), 451);
    assert_string_equal(json_string_value(json_object_get(o, "enhanced")), "4.7.1");
    assert_true(json_is_false(json_object_get(o, "alert")));
    assert_true(json_is_false(json_object_get(o, "counts_streak")));
    assert_null(json_object_get(o, "stated_wait_ms"));
    assert_int_equal(int_at(o, "give_up_after_ms"), 48 * HOUR);
    json_t *f = json_object_get(o, "forecast");
    assert_int_equal(json_array_size(f), 6); /* the policy's max_attempts */
    int64_t want[][2] = {{5 * MIN, 30 * MIN}, {35 * MIN, 90 * MIN}, {95 * MIN, 210 * MIN}, {155 * MIN, 330 * MIN}};
    for (size_t i = 0; i < 4; i++) {
        json_t *w = json_array_get(f, i);
        assert_int_equal(int_at(w, "attempt"), i + 1);
        assert_int_equal(int_at(w, "after_min_ms"), want[i][0]);
        assert_int_equal(int_at(w, "after_max_ms"), want[i][1]);
    }
    json_decref(o);

    /* auth_failure for a 5xx: give up with an alert, no forecast; a
     * fallback has a null rule; an empty enhanced code is left out. */
    c = (struct classification){.class_idx = 2, .rule_idx = -1, .code = 550, .enhanced = "", .stated_wait_ms = 0};
    o = explain_classification(p, &c);
    assert_string_equal(json_string_value(json_object_get(o, "class")), "auth_failure");
    assert_string_equal(json_string_value(json_object_get(o, "action")), "give_up");
    assert_true(json_is_null(json_object_get(o, "rule")));
    assert_null(json_object_get(o, "enhanced"));
    assert_true(json_is_true(json_object_get(o, "alert")));
    assert_int_equal(json_array_size(json_object_get(o, "forecast")), 0);
    assert_null(json_object_get(o, "give_up_after_ms"));
    json_decref(o);

    /* The same class for a 4xx retries; a stated wait is reported; the
     * class's own limits apply (mailbox_full: 3 attempts, 3d). */
    c = (struct classification){.class_idx = 2, .rule_idx = 1, .code = 451, .enhanced = "", .stated_wait_ms = 300000};
    o = explain_classification(p, &c);
    assert_string_equal(json_string_value(json_object_get(o, "action")), "retry");
    assert_string_equal(json_string_value(json_object_get(o, "rule")), "dmarc");
    assert_int_equal(int_at(o, "stated_wait_ms"), 300000);
    assert_int_equal(int_at(json_array_get(json_object_get(o, "forecast"), 0), "after_min_ms"), HOUR);
    json_decref(o);
    c = (struct classification){.class_idx = 3, .rule_idx = -1, .code = 452, .enhanced = "4.2.2", .stated_wait_ms = 0};
    o = explain_classification(p, &c);
    assert_true(json_is_true(json_object_get(o, "counts_streak")));
    assert_int_equal(json_array_size(json_object_get(o, "forecast")), 3);
    assert_int_equal(int_at(o, "give_up_after_ms"), 3 * DAY);
    json_decref(o);

    /* suppress */
    c = (struct classification){.class_idx = 4, .rule_idx = 4, .code = 550, .enhanced = "5.1.1", .stated_wait_ms = 0};
    o = explain_classification(p, &c);
    assert_string_equal(json_string_value(json_object_get(o, "action")), "suppress");
    assert_string_equal(json_string_value(json_object_get(o, "rule")), "rule#3");
    json_decref(o);
    policy_free(p);
}

static void expect_pos(const char *text, const char *const *path, int depth, int want_line, int want_col)
{
    int line = -1, col = -1;
    int rc = json_pos_find(text, strlen(text), path, depth, &line, &col);

    if (want_line == 0) {
        if (rc != -1 || line != 1 || col != 1)
            fail_msg("path of depth %d: want not found, got rc %d at %d:%d", depth, rc, line, col);
        return;
    }
    if (rc != 0 || line != want_line || col != want_col)
        fail_msg("path of depth %d: got rc %d at %d:%d, want %d:%d", depth, rc, line, col, want_line, want_col);
}

#define P(...) ((const char *const[]){__VA_ARGS__}), (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))

static void test_json_pos(void **state)
{
    static const char text[] =
        "{\n"
        "  \"a\": {\"b\": [10, {\"c\": \"x\"}, [1, [2, 3]]], \"s\": \"}]\\\"{\"},\n"
        "  \"k\\\"ey\": 1,\r\n"
        "  \"\\u00e9t\\u00e9\": \"\xc3\xa9\",\n"
        "  \"\xc3\xa9\xc3\xa9\": {\"z\": true, \"\\ud83d\\ude00\": null},\n"
        "  \"[1]\": [ ],\n"
        "  \"e\": {}\n"
        "}\n";
    (void)state;

    expect_pos(text, NULL, 0, 1, 1);
    expect_pos(text, P("a"), 2, 8);
    expect_pos(text, P("~a"), 2, 3);
    expect_pos(text, P("a", "b"), 2, 14);
    expect_pos(text, P("a", "~b"), 2, 9);
    expect_pos(text, P("a", "b", "[0]"), 2, 15);
    expect_pos(text, P("a", "b", "[1]", "c"), 2, 25);
    expect_pos(text, P("a", "b", "[2]", "[1]", "[0]"), 2, 36);
    expect_pos(text, P("a", "b", "[2]", "[1]", "[1]"), 2, 39);
    expect_pos(text, P("a", "s"), 2, 50); /* after a string full of brackets */
    expect_pos(text, P("k\"ey"), 3, 12);  /* an escaped quote in a key */
    expect_pos(text, P("\xc3\xa9t\xc3\xa9"), 4, 20); /* \u escapes match UTF-8 */
    expect_pos(text, P("\xc3\xa9\xc3\xa9", "z"), 5, 15); /* columns count characters */
    expect_pos(text, P("\xc3\xa9\xc3\xa9", "\xf0\x9f\x98\x80"), 5, 37); /* a surrogate pair */
    expect_pos(text, P("[1]"), 6, 10); /* "[1]" is a key in an object */
    expect_pos(text, P("e"), 7, 8);

    /* Not found: line 1, column 1. */
    expect_pos(text, P("nope"), 0, 0);
    expect_pos(text, P("a", "nope"), 0, 0);
    expect_pos(text, P("a", "b", "[3]"), 0, 0);
    expect_pos(text, P("a", "b", "x"), 0, 0);            /* a key in an array */
    expect_pos(text, P("a", "b", "[0]", "[0]"), 0, 0);   /* into a scalar */
    expect_pos(text, P("e", "x"), 0, 0);                 /* in an empty object */
    expect_pos(text, P("[1]", "[0]"), 0, 0);             /* in an empty array */
    expect_pos(text, P("~nope"), 0, 0);
    expect_pos(text, P("a", "b", "[-1]"), 0, 0);

    /* Leading white space, and text that is not NUL-terminated. */
    expect_pos("\n\n   {\"x\": 1}", NULL, 0, 3, 4);
    int line, col;
    assert_int_equal(json_pos_find("{\"a\": 12345}", 6, P("a"), &line, &col), -1);
    assert_int_equal(json_pos_find("{\"a\": 12345}", 7, P("a"), &line, &col), 0);
    assert_int_equal(col, 7);
    /* Broken text gives not found rather than a crash. */
    expect_pos("{\"a\": [1, 2", P("a", "[5]"), 0, 0);
    expect_pos("{\"a\" 1}", P("a"), 0, 0);
    expect_pos("{\"a\": \"\\x\", \"b\": 1}", P("b"), 0, 0);
    expect_pos("", NULL, 0, 0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_example),       cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_error_syntax),       cmocka_unit_test(test_error_unknown_key),
        cmocka_unit_test(test_error_wrong_type),   cmocka_unit_test(test_error_duration),
        cmocka_unit_test(test_error_class),        cmocka_unit_test(test_error_fallback),
        cmocka_unit_test(test_error_rules),        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_short_err_buffer),   cmocka_unit_test(test_json_pos),
        cmocka_unit_test(test_explain),            cmocka_unit_test(test_learn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
