/*
 * libFuzzer entry point over the policy loader: the whole input is a
 * policy file (operator regexes, durations, classes, rules). A policy it
 * accepts must then classify a few replies and explain them without
 * fault, and the loader must never accept what breaks its own bounds.
 */
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "config/explain.h"
#include "config/policy_load.h"
#include "queue/classify.h"

static const struct {
    int code;
    const char *enhanced, *text;
} replies[] = {
    {451, "4.7.1", "Greylisted, please try again in 5 minutes"},
    {550, "5.1.1", "<user@example.com>: Recipient address rejected: User unknown"},
    {452, NULL, "Mailbox full, retry after 01:30:00"},
    {0, NULL, "421 4.7.0 Try again later"},
    {554, "", ""},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    err[0] = '\0';
    struct policy *p = policy_load_string((const char *)data, size, "fuzz", err, sizeof err);
    if (!p) {
        CHECK(err[0] != '\0');
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        return 0;
    }
    CHECK(p->nclasses > 0);
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        struct classification c;
        classify_reply(p, replies[i].code, replies[i].enhanced, replies[i].text, &c);
        CHECK(c.class_idx >= 0 && c.class_idx < p->nclasses);
        json_t *e = explain_classification(p, &c);
        CHECK(json_is_object(e));
        json_decref(e);
    }
    policy_free(p);
    return 0;
}
