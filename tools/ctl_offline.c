/*
 * reboundctl's offline commands, which need no daemon.
 *
 * `classify` loads the policy once and answers each NDJSON line of stdin
 * with exactly the line the daemon's classify op would send (the same
 * request validation from proto/, the same classifier and the same
 * explanation), one output line per input line, errors included. Output is
 * flushed whenever input runs dry, so a script may also drive it as a
 * co-process, one line at a time.
 *
 * `check-policy` (and classify --check) loads and validates a policy file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/explain.h"
#include "config/policy_load.h"
#include "config/policy_path.h"
#include "proto/reply.h"
#include "proto/request.h"
#include "queue/classify.h"
#include "tools/ctl.h"

/* Answers one input line with the line the daemon's classify op would
 * send. Never fails: an invalid line gets an error line. *ok says which. */
static char *classify_line(const struct policy *p, const struct proto_limits *lim, const char *line, size_t len,
                           bool *ok, size_t *outlen)
{
    char msg[300];
    json_error_t jerr;
    *ok = false;
    if (is_blank(line, len))
        return reply_error(NULL, ERR_BAD_REQUEST, "empty line: expected a JSON object", outlen);
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(msg, sizeof msg, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        return reply_error(NULL, ERR_BAD_REQUEST, msg, outlen);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return reply_error(NULL, ERR_BAD_REQUEST, "expected a JSON object {\"code\",\"enhanced\",\"text\"}", outlen);
    }
    /* The daemon's own validation, so that offline and online answers
     * cannot differ: the line becomes a classify request. */
    json_object_set_new(root, "op", json_string("classify"));
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        return reply_error(NULL, ERR_INTERNAL, "cannot encode the line", outlen);
    struct request r;
    struct proto_error perr;
    char *out;
    if (request_parse(text, strlen(text), lim, &r, &perr) != 0) {
        out = reply_error(r.req, perr.code, perr.message, outlen);
    } else {
        struct classification c;
        classify_reply(p, r.code, r.enhanced, r.text, &c);
        out = reply_ok(explain_classification(p, &c), r.req, outlen);
        *ok = out != NULL;
    }
    request_free(&r);
    free(text);
    if (!out)
        out_of_memory();
    return out;
}

static int classify_stream(const struct policy *p)
{
    struct proto_limits lim;
    proto_limits_default(&lim);
    struct frame in;
    frame_init(&in, MAX_LINE);
    bool eof = false, any_error = false;
    int rc = 0;
    if (isatty(STDIN_FILENO))
        fputs("reboundctl: reading NDJSON lines {\"code\",\"enhanced\",\"text\"} from stdin (Ctrl-D ends)\n",
              stderr);
    for (;;) {
        const char *line;
        size_t len;
        int r = frame_next(&in, &line, &len);
        if (r == 1) {
            bool ok;
            size_t n;
            char *out = classify_line(p, &lim, line, len, &ok, &n);
            fwrite(out, 1, n, stdout);
            free(out);
            any_error |= !ok;
            continue;
        }
        if (r < 0) {
            errorf("an input line is longer than %u bytes", MAX_LINE);
            rc = EXIT_IO;
            break;
        }
        if (eof) {
            r = input_end_last_line(&in);
            if (r < 0)
                rc = EXIT_IO;
            if (r <= 0)
                break;
            continue;
        }
        /* About to wait for input: whoever feeds us line by line must
         * see the answers so far. */
        if (flush_out() < 0) {
            rc = EXIT_IO;
            break;
        }
        ssize_t got = read_some(STDIN_FILENO, &in);
        if (got < 0) {
            errorf("cannot read stdin: %s", strerror(errno));
            rc = EXIT_IO;
            break;
        }
        eof = got == 0;
    }
    frame_free(&in);
    if (flush_out() < 0 && rc == 0)
        rc = EXIT_IO;
    return rc ? rc : any_error ? EXIT_REPLY : 0;
}

static int check_policy(const struct ctl *ctl, const char *path)
{
    char err[1024] = "";
    struct policy *p = policy_load_file(path, err, sizeof err);
    if (!p) {
        if (ctl->json) {
            char *line = reply_error(NULL, "bad_policy", err, NULL);
            if (line)
                fputs(line, stdout);
            free(line);
        }
        errorf("%s", err);
        flush_out();
        return EXIT_REPLY;
    }
    if (ctl->json) {
        json_t *o = json_pack("{s:s,s:i,s:I}", "policy", path, "classes", p->nclasses, "rules", (json_int_t)p->nrules);
        char *line = reply_ok(o, NULL, NULL);
        if (line)
            fputs(line, stdout);
        free(line);
    } else
        printf("%s: ok, %d classes, %zu rules\n", path, p->nclasses, p->nrules);
    policy_free(p);
    return flush_out() < 0 ? EXIT_IO : 0;
}

struct classify_args {
    const char *policy;
    struct reply_args reply;
    bool check;
};

static int classify_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct classify_args *a = state;
    if (reply_option(&a->reply, c, arg))
        return 0;
    switch (c) {
    case O_POLICY:
        a->policy = arg;
        break;
    case O_CHECK:
        a->check = true;
        break;
    default:
        return usage_error(ctl, "unexpected option");
    }
    return 0;
}

int cmd_classify(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"policy", required_argument, NULL, O_POLICY},
        REPLY_OPTIONS,
        {"check", no_argument, NULL, O_CHECK},
        {0, 0, 0, 0},
    };
    struct classify_args a = {.policy = policy_path_default(REBOUND_DEFAULT_POLICY)};
    int rc = parse_options(ctl, argc, argv, opts, classify_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    bool single = a.reply.code || a.reply.enhanced || a.reply.text;
    if (a.check && single)
        return usage_error(ctl, "--check takes no reply to classify");
    if (a.check)
        return check_policy(ctl, a.policy);

    json_t *one = NULL;
    if (single) {
        one = json_object();
        if (a.reply.code) {
            long long code;
            rc = parse_code(ctl, a.reply.code, &code);
            if (rc) {
                json_decref(one);
                return rc;
            }
            json_object_set_new(one, "code", json_integer(code));
        }
        if (a.reply.enhanced)
            json_object_set_new(one, "enhanced", json_string(a.reply.enhanced));
        if (a.reply.text) {
            json_t *t = json_string(a.reply.text);
            if (!t) {
                json_decref(one);
                return usage_error(ctl, "--text is not valid UTF-8");
            }
            json_object_set_new(one, "text", t);
        }
    }

    char err[1024] = "";
    struct policy *p = policy_load_file(a.policy, err, sizeof err);
    if (!p) {
        json_decref(one);
        errorf("%s", err);
        return EXIT_REPLY;
    }
    if (!single) {
        rc = classify_stream(p);
        policy_free(p);
        return rc;
    }

    struct proto_limits lim;
    proto_limits_default(&lim);
    char *text = json_dumps(one, JSON_COMPACT);
    json_decref(one);
    bool ok;
    size_t n;
    char *line = classify_line(p, &lim, text, strlen(text), &ok, &n);
    free(text);
    policy_free(p);
    json_t *j = json_loadb(line, n, 0, NULL);
    render_answer(ctl, line, n, j);
    json_decref(j);
    free(line);
    if (flush_out() < 0)
        return EXIT_IO;
    return ok ? 0 : EXIT_REPLY;
}

int cmd_check_policy(struct ctl *ctl, int argc, char **argv)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the policy FILE is missing" : "one policy FILE only");
    return check_policy(ctl, argv[optind]);
}
