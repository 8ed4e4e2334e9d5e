/*
 * libFuzzer entry point over `reboundctl classify`'s offline input: NDJSON
 * lines read from stdin, each answered with the line the daemon's
 * classify op would send (tools/ctl_offline.c, compiled into this file
 * so that its line handler, a static function, is reached as the command
 * reaches it). The input is cut into lines by the same frame code and
 * limit, the last line without '\n' included.
 *
 * Checked besides the sanitizers: one answer per line, each one JSON
 * object with "ok" and one '\n', at its end; an "ok":true answer names a
 * class and an action.
 */
#include "tests/fuzz/fuzz.h"

#include "tools/ctl_offline.c"

/* reboundctl.c's, which holds main: what ctl_offline.c links against. */
int parse_options(struct ctl *ctl, int argc, char **argv, const struct option *longopts,
                  int (*handler)(struct ctl *, int, const char *, void *), void *state)
{
    return EXIT_USAGE;
}
const struct option common_only[] = {{0, 0, 0, 0}};

static struct policy *policy;

static void answer(const struct proto_limits *lim, const char *line, size_t len)
{
    bool ok;
    size_t n;
    char *out = classify_line(policy, lim, line, len, &ok, &n);
    CHECK(out != NULL && n >= 3 && out[n - 1] == '\n' && memchr(out, '\n', n - 1) == NULL);
    json_t *o = json_loadb(out, n - 1, JSON_REJECT_DUPLICATES, NULL);
    CHECK(json_is_object(o));
    CHECK(json_is_true(json_object_get(o, "ok")) == ok);
    if (ok)
        CHECK(json_is_string(json_object_get(o, "class")) && json_is_string(json_object_get(o, "action")));
    else
        CHECK(json_is_object(json_object_get(o, "error")));
    json_decref(o);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!policy) {
        char err[512];
        policy = policy_load_file(REBOUND_SOURCE_DIR "/config/policy.json", err, sizeof err);
        CHECK(policy != NULL);
    }
    struct proto_limits lim;
    proto_limits_default(&lim);
    struct frame in;
    frame_init(&in, MAX_LINE);
    size_t fed = 0;
    bool eof = false;
    for (;;) {
        const char *line;
        size_t len;
        int r = frame_next(&in, &line, &len);
        if (r == 1) {
            answer(&lim, line, len);
            continue;
        }
        if (r < 0)
            break; /* the command stops: a line over MAX_LINE */
        if (eof) {
            if (input_end_last_line(&in) <= 0)
                break;
            continue;
        }
        size_t avail;
        char *p = frame_space(&in, 4096, &avail);
        CHECK(p != NULL);
        size_t n = size - fed < avail ? size - fed : avail;
        memcpy(p, data + fed, n);
        frame_commit(&in, n);
        fed += n;
        eof = fed == size;
    }
    frame_free(&in);
    return 0;
}
