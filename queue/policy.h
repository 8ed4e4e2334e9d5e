/*
 * The retry policy: classes of failure and what to do about each, and the
 * ordered rules that map an SMTP reply to a class (see classify.h).
 *
 * A policy is built by config/policy_load.c from the policy file and is
 * immutable afterwards: the daemon swaps whole policies on reload, so every
 * reader may keep a pointer for the length of one decision.
 */
#ifndef REBOUND_QUEUE_POLICY_H
#define REBOUND_QUEUE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POLICY_NAME_MAX 32
#define POLICY_MAX_STEPS 16
#define POLICY_MAX_CLASSES 250 /* class indices fit in a uint8_t, with room for "none" */

enum action {
    ACTION_RETRY = 0,
    ACTION_GIVE_UP = 1,
    ACTION_SUPPRESS = 2,
};

/* Why a rule's reply suppresses the address, when it does: the address
 * does not exist, or it exists but its account is disabled, inactive,
 * suspended or closed (a platform may treat the two differently). */
enum rule_reason {
    RULE_REASON_UNKNOWN = 0,  /* "hard_invalid" */
    RULE_REASON_DISABLED = 1, /* "disabled" */
};

/* The delay before one retry: drawn uniformly from [lo_ms, hi_ms]; a fixed
 * delay has lo_ms == hi_ms and gets the class's jitter_pct instead. */
struct policy_step {
    int64_t lo_ms;
    int64_t hi_ms;
};

/* Learned timing for a class (queue/learn.h, decide_bounce_learned): when
 * the receiving domain has shown, with at least min_evidence deliveries,
 * at what age after the first deferral it accepts, the next retry is
 * scheduled at that age plus the margin and an upward jitter, inside the
 * class's bounds; otherwise at the table's time. */
struct policy_learn {
    bool enabled;
    int min_evidence;  /* deliveries since the domain last contradicted it; 1..1000 */
    int margin_pct;    /* added to the learned age: a percentage of it, */
    int64_t margin_ms; /* or a fixed duration (one of the two is 0) */
    int jitter_pct;    /* 0..100: upward spread, a percentage of age + margin */
    int64_t forget_ms; /* evidence unchanged for longer is not used; 0: kept */
};

struct policy_class {
    char name[POLICY_NAME_MAX];
    enum action action_4xx; /* for replies with a 4xx basic code */
    enum action action_5xx; /* for 5xx (and anything else that is not 4xx) */
    bool alert_4xx;         /* also raise a sender_alert event */
    bool alert_5xx;
    struct policy_step steps[POLICY_MAX_STEPS]; /* steps[k] is the delay before retry k+1 */
    int nsteps;             /* retries past nsteps reuse steps[nsteps-1] */
    int jitter_pct;         /* +/- percent applied to fixed steps, 0..100 */
    int64_t jitter_lo_ms;   /* or a range added to fixed steps (when jitter_pct is 0), */
    int64_t jitter_hi_ms;   /* e.g. 0 .. 60 s; lo may be negative */
    int max_attempts;       /* retries allowed for this class; 0: the policy's */
    int64_t max_age_ms;     /* 0: the policy's */
    bool counts_streak;     /* a give_up in this class counts toward the recipient's soft streak */
    bool throttles;         /* a reply in this class counts toward throttling its receiving domain */
    struct policy_learn learn;
};

/* Case-insensitive text matcher: a plain substring, or a POSIX extended
 * regular expression when the policy file wrote it as "/.../". */
struct policy_text {
    char *pattern;      /* lower-cased for substrings, as written for regexes */
    bool is_regex;
    void *regex;        /* regex_t *, compiled with REG_ICASE | REG_EXTENDED | REG_NOSUB */
};

/* A rule matches when every condition it sets holds. Rules with text
 * patterns are tried first, in file order, then rules keyed on an enhanced
 * code, then rules keyed on the basic code only (SPEC section 3).
 *
 * A guard rule takes no part in that: it is tried only when the result
 * would suppress the address, and when it matches its class replaces the
 * result. Guards are how "a reply about the sender never suppresses the
 * recipient" holds whatever code or recipient wording the reply carries. */
struct policy_rule {
    char *name;
    int class_idx;
    int code_lo, code_hi;    /* basic code range; 0, 0 = any */
    char enhanced[16];       /* "" = any; "4.7.1" exact; "4.7.*" or "4.7.5*" prefix */
    bool enhanced_prefix;
    size_t enhanced_len;     /* length of the fixed part when enhanced_prefix */
    struct policy_text *texts; /* any one of them must match; none = no text condition */
    size_t ntexts;
    bool guard;              /* only consulted against a suppression (see above) */
    enum rule_reason reason; /* the suppression's reason when this rule decides one */
};

struct policy {
    struct policy_class classes[POLICY_MAX_CLASSES];
    int nclasses;
    struct policy_rule *rules;
    size_t nrules;
    int temp_other;          /* class index used for 4xx with no better match */
    int hard_other;          /* class index used for 5xx with no better match */
    int max_attempts;        /* default 8 */
    int64_t max_age_ms;      /* default 72 h, measured from the first bounce */
    int64_t awaiting_ms;     /* how long a fired retry waits for its outcome before it is forgotten; default: max_age */
    /* recipient streaks: a recipient soft-bouncing across messages */
    int streak_campaigns;    /* default 3 */
    int64_t chronic_span_ms; /* default 30 days */
    int chronic_attempts;    /* default 5 */
    /* receiving domains: a domain that sent throttle_replies replies of a
     * class with `throttles` within throttle_window_ms is backed off for
     * backoff_ms (at most once per window); every domain's retries leave
     * at most pace_per_second a second, with a burst of pace_burst when it
     * was quiet; a sender_alert is raised once per domain and class per
     * alert_window_ms (0: for every report). */
    int throttle_replies;        /* default 50 */
    int64_t throttle_window_ms;  /* default 60 s */
    int64_t backoff_ms;          /* default 30 min */
    int pace_per_second;         /* default 100; 0: no pace */
    int pace_burst;              /* default 200 */
    int64_t alert_window_ms;     /* default 1 h */
};

/* Returns the index of the class called name, or -1. */
int policy_class_find(const struct policy *p, const char *name);

/* Frees a policy made by the loader, including its rules. NULL is a no-op. */
void policy_free(struct policy *p);

const char *action_name(enum action a);

#endif
