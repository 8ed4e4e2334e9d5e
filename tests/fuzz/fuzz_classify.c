/*
 * libFuzzer entry point over the classifier with the shipped policy: the
 * reply a client reports (code, enhanced code, text) goes through
 * normalisation, address masking, stated-wait parsing and the policy's
 * regexes, then through the explanation the classify op sends.
 *
 * Input layout: bytes 0-1 pick the basic code (0, "unknown", or 200..599);
 * the rest up to the first '\n' is the enhanced code field (none when
 * there is no '\n'), what follows the text. Checked besides the
 * sanitizers: the class and rule are the policy's, a stated wait is within
 * its 7-day bound, the cached classifier agrees with the plain one, and
 * the explanation encodes.
 */
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "config/explain.h"
#include "config/policy_load.h"
#include "queue/classify.h"

static struct policy *policy;
static struct classify_cache cache;

static const struct policy *shipped_policy(void)
{
    if (!policy) {
        char err[512];
        policy = policy_load_file(REBOUND_SOURCE_DIR "/config/policy.json", err, sizeof err);
        CHECK(policy != NULL);
    }
    return policy;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct policy *p = shipped_policy();
    if (size < 2)
        return 0;
    unsigned v = ((unsigned)data[0] << 8 | data[1]) % 401;
    int code = v == 400 ? 0 : 200 + (int)v;
    data += 2;
    size -= 2;

    /* Both strings NUL-terminated, as the daemon passes them. */
    char *buf = malloc(size + 1);
    CHECK(buf != NULL);
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *nl = memchr(buf, '\n', size);
    const char *enhanced = NULL, *text = buf;
    if (nl) {
        *nl = '\0';
        enhanced = buf;
        text = nl + 1;
    }

    struct classification c, cc;
    classify_reply(p, code, enhanced, text, &c);
    CHECK(c.class_idx >= 0 && c.class_idx < p->nclasses);
    CHECK(c.rule_idx >= -1 && (c.rule_idx < 0 || (size_t)c.rule_idx < p->nrules));
    CHECK(c.stated_wait_ms >= 0 && c.stated_wait_ms <= 7LL * 86400 * 1000);
    CHECK(c.code == 0 || (c.code >= 200 && c.code <= 599));
    CHECK(memchr(c.enhanced, '\0', sizeof c.enhanced) != NULL);

    /* twice: a miss, then (for a short text) a hit */
    for (int i = 0; i < 2; i++) {
        classify_cached(&cache, p, 1, code, enhanced, text, &cc);
        CHECK(cc.class_idx == c.class_idx && cc.rule_idx == c.rule_idx && cc.code == c.code &&
              cc.stated_wait_ms == c.stated_wait_ms && strcmp(cc.enhanced, c.enhanced) == 0);
    }

    json_t *e = explain_classification(p, &c);
    CHECK(json_is_object(e));
    char *out = json_dumps(e, JSON_COMPACT);
    CHECK(out != NULL);
    free(out);
    json_decref(e);
    free(buf);
    return 0;
}
