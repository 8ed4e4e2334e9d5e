/*
 * reboundctl's commands that talk to reboundd: each parses its options,
 * builds one request (docs/protocol.md) and prints the reply; suppressed
 * --all pages through a list, send pipelines raw lines, tail follows
 * events until interrupted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/duration.h"
#include "proto/request.h"
#include "tools/ctl.h"

/* One request, one reply, printed. Steals req. */
static int call_and_print(const struct ctl *ctl, json_t *req)
{
    struct client cl = {.fd = -1};
    json_t *reply = NULL;
    const char *raw;
    size_t len;
    int rc = client_open(&cl, ctl);
    const char *rcpt = json_string_value(json_object_get(req, "rcpt"));
    if (rc == 0 && rcpt)
        client_route(&cl, rcpt);
    if (rc == 0)
        rc = client_request(&cl, req, &reply, &raw, &len);
    if (rc == 0 && client_follow_owner(&cl, reply)) {
        json_decref(reply);
        reply = NULL;
        rc = client_request(&cl, req, &reply, &raw, &len);
    }
    json_decref(req);
    if (rc) {
        client_close(&cl);
        return rc;
    }
    bool ok = render_answer(ctl, raw, len, reply);
    json_decref(reply);
    client_close(&cl);
    if (flush_out() < 0)
        return EXIT_IO;
    return ok ? 0 : EXIT_REPLY;
}

struct bounce_args {
    const char *id, *rcpt, *campaign, *not_before, *meta;
    struct reply_args reply;
};

static int bounce_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct bounce_args *a = state;
    if (reply_option(&a->reply, c, arg))
        return 0;
    switch (c) {
    case O_ID:
        a->id = arg;
        break;
    case O_RCPT:
        a->rcpt = arg;
        break;
    case O_CAMPAIGN:
        a->campaign = arg;
        break;
    case O_NOT_BEFORE:
        a->not_before = arg;
        break;
    case O_META:
        a->meta = arg;
        break;
    default:
        return usage_error(ctl, "unexpected option");
    }
    return 0;
}

int cmd_bounce(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"id", required_argument, NULL, O_ID},
        {"rcpt", required_argument, NULL, O_RCPT},
        REPLY_OPTIONS,
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {"not-before", required_argument, NULL, O_NOT_BEFORE},
        {"meta", required_argument, NULL, O_META},
        {0, 0, 0, 0},
    };
    struct bounce_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, bounce_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    if (!a.id || !a.rcpt || !a.reply.code)
        return usage_error(ctl, "--id, --rcpt and --code are required");
    long long code;
    rc = parse_code(ctl, a.reply.code, &code);
    if (rc)
        return rc;

    json_t *req = json_pack("{s:s,s:s,s:s,s:I}", "op", "bounce", "id", a.id, "rcpt", a.rcpt, "code", code);
    if (!req || set_string(req, "enhanced", a.reply.enhanced) || set_string(req, "text", a.reply.text) ||
        set_string(req, "campaign", a.campaign)) {
        json_decref(req);
        return usage_error(ctl, "the arguments must be valid UTF-8");
    }
    if (a.not_before) {
        long long nb;
        int64_t d;
        if (a.not_before[0] == '+' && duration_parse(a.not_before + 1, &d) == 0)
            nb = now_ms() + d;
        else if (parse_int(a.not_before, 1, INT64_MAX, &nb) < 0) {
            json_decref(req);
            return usage_error(ctl, "--not-before: \"%s\" is neither epoch milliseconds nor +DURATION",
                               a.not_before);
        }
        json_object_set_new(req, "not_before", json_integer(nb));
    }
    if (a.meta) {
        json_error_t jerr;
        json_t *meta = json_loads(a.meta, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(meta)) {
            json_decref(meta);
            json_decref(req);
            return usage_error(ctl, "--meta must be a JSON object%s%s", meta ? "" : ": ", meta ? "" : jerr.text);
        }
        json_object_set_new(req, "meta", meta);
    }
    return call_and_print(ctl, req);
}

static int rcpt_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    if (c != O_RCPT)
        return usage_error(ctl, "unexpected option");
    *(const char **)state = arg;
    return 0;
}

/* Commands with exactly one operand, the message id. */
static int id_command(struct ctl *ctl, int argc, char **argv, const char *op, bool with_rcpt)
{
    static const struct option with[] = {COMMON_OPTIONS, {"rcpt", required_argument, NULL, O_RCPT}, {0, 0, 0, 0}};
    const char *rcpt = NULL;
    int rc = parse_options(ctl, argc, argv, with_rcpt ? with : common_only, with_rcpt ? rcpt_opt : NULL, &rcpt);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the message ID is missing" : "one message ID only");
    json_t *req = json_pack("{s:s,s:s}", "op", op, "id", argv[optind]);
    if (!req)
        return usage_error(ctl, "the ID is not valid UTF-8");
    if (set_string(req, "rcpt", rcpt) < 0) {
        json_decref(req);
        return usage_error(ctl, "--rcpt is not valid UTF-8");
    }
    return call_and_print(ctl, req);
}

int cmd_delivered(struct ctl *ctl, int argc, char **argv)
{
    return id_command(ctl, argc, argv, "delivered", true);
}

static int selection_command(struct ctl *ctl, int argc, char **argv, const char *op);

int cmd_cancel(struct ctl *ctl, int argc, char **argv)
{
    return selection_command(ctl, argc, argv, "cancel");
}

/* get ID, or get --rcpt ADDR for a recipient alone (with both, the daemon
 * answers about the message). */
int cmd_get(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {COMMON_OPTIONS, {"rcpt", required_argument, NULL, O_RCPT}, {0, 0, 0, 0}};
    const char *rcpt = NULL;
    int rc = parse_options(ctl, argc, argv, opts, rcpt_opt, &rcpt);
    if (rc >= 0)
        return rc;
    if (argc - optind > 1)
        return usage_error(ctl, "one message ID only");
    if (argc == optind && !rcpt)
        return usage_error(ctl, "give a message ID, or --rcpt ADDR for a recipient");
    json_t *req = json_pack("{s:s}", "op", "get");
    if (argc > optind && set_string(req, "id", argv[optind]) < 0) {
        json_decref(req);
        return usage_error(ctl, "the ID is not valid UTF-8");
    }
    if (set_string(req, "rcpt", rcpt) < 0) {
        json_decref(req);
        return usage_error(ctl, "--rcpt is not valid UTF-8");
    }
    return call_and_print(ctl, req);
}

static int simple_command(struct ctl *ctl, int argc, char **argv, const char *op)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    return call_and_print(ctl, json_pack("{s:s}", "op", op));
}

int cmd_stats(struct ctl *ctl, int argc, char **argv)
{
    return simple_command(ctl, argc, argv, "stats");
}

struct page_args {
    const char *cursor, *count;
    bool all;
};

static int page_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct page_args *a = state;
    switch (c) {
    case O_ALL:
        a->all = true;
        break;
    case O_CURSOR:
        a->cursor = arg;
        break;
    case O_COUNT:
        a->count = arg;
        break;
    default:
        return usage_error(ctl, "unexpected option");
    }
    return 0;
}

/* --all of a paged op: base (owned) is the request without its cursor; every
 * page is asked for on one connection, each item printed as a JSON line. */
static int every_page(const struct ctl *ctl, json_t *base)
{
    struct client cl = {.fd = -1};
    int rc = client_open(&cl, ctl);
    char *cursor = xasprintf("0");
    while (rc == 0) {
        json_t *req = json_deep_copy(base);
        json_object_set_new(req, "cursor", json_string(cursor));
        json_t *reply;
        const char *raw;
        size_t len;
        rc = client_request(&cl, req, &reply, &raw, &len);
        json_decref(req);
        if (rc)
            break;
        if (!json_is_true(json_object_get(reply, "ok"))) {
            render_error(reply);
            json_decref(reply);
            rc = EXIT_REPLY;
            break;
        }
        size_t i;
        json_t *item;
        json_array_foreach(json_object_get(reply, "items"), i, item)
        {
            char *line = json_dumps(item, JSON_COMPACT);
            if (line)
                put_line(line, strlen(line));
            free(line);
        }
        const char *next = json_string_value(json_object_get(reply, "cursor"));
        free(cursor);
        cursor = xasprintf("%s", next ? next : "0");
        json_decref(reply);
        if (flush_out() < 0)
            rc = EXIT_IO;
        if (strcmp(cursor, "0") == 0)
            break;
    }
    free(cursor);
    client_close(&cl);
    json_decref(base);
    return rc;
}

/* --all: every page of the suppressed list, each address a JSON line. */
static int suppressed_all(const struct ctl *ctl, long long count)
{
    return every_page(ctl, json_pack("{s:s,s:I}", "op", "suppressed", "count", count));
}

int cmd_suppressed(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"all", no_argument, NULL, O_ALL},
        {"cursor", required_argument, NULL, O_CURSOR},
        {"count", required_argument, NULL, O_COUNT},
        {0, 0, 0, 0},
    };
    struct page_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, page_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    long long count = a.all ? 1000 : 100;
    if (a.count && parse_int(a.count, 1, 1000, &count) < 0)
        return usage_error(ctl, "--count: \"%s\" is not a number 1..1000", a.count);
    if (a.all) {
        if (a.cursor)
            return usage_error(ctl, "--all starts at the beginning; leave out --cursor");
        return suppressed_all(ctl, count);
    }
    json_t *req = json_pack("{s:s,s:I}", "op", "suppressed", "count", count);
    if (a.cursor && set_string(req, "cursor", a.cursor) < 0) {
        json_decref(req);
        return usage_error(ctl, "--cursor is not valid UTF-8");
    }
    return call_and_print(ctl, req);
}

/* Commands whose one operand is the value of one field. */
static int operand_command(struct ctl *ctl, int argc, char **argv, const char *op, const char *field,
                           const char *what)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the %s is missing" : "one %s only", what);
    json_t *req = json_pack("{s:s}", "op", op);
    if (set_string(req, field, argv[optind]) < 0) {
        json_decref(req);
        return usage_error(ctl, "the %s is not valid UTF-8", what);
    }
    return call_and_print(ctl, req);
}

int cmd_unsuppress(struct ctl *ctl, int argc, char **argv)
{
    return operand_command(ctl, argc, argv, "unsuppress", "rcpt", "address");
}

int cmd_domain(struct ctl *ctl, int argc, char **argv)
{
    return operand_command(ctl, argc, argv, "domain", "domain", "domain name");
}

int cmd_ping(struct ctl *ctl, int argc, char **argv)
{
    return simple_command(ctl, argc, argv, "ping");
}

/* send: requests from the arguments or stdin, replies printed as they
 * come, with at most SEND_WINDOW requests unanswered. */
int cmd_send(struct ctl *ctl, int argc, char **argv)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;

    struct frame src;
    frame_init(&src, MAX_LINE);
    bool src_eof = false;
    if (optind < argc) {
        for (int i = optind; i < argc; i++) {
            size_t n = strlen(argv[i]), avail;
            char *p = frame_space(&src, n + 1, &avail);
            if (!p || avail < n + 1) {
                frame_free(&src);
                errorf("out of memory");
                return EXIT_IO;
            }
            memcpy(p, argv[i], n);
            p[n] = '\n';
            frame_commit(&src, n + 1);
        }
        src_eof = true;
    }

    struct client cl = {.fd = -1};
    rc = client_open(&cl, ctl);
    if (rc == 0)
        rc = client_pipeline(&cl, &src, src_eof, STDIN_FILENO);
    frame_free(&src);
    client_close(&cl);
    return rc;
}

struct tail_args {
    const char *group;
    const char *types;
    bool no_ack;
};

static int tail_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct tail_args *a = state;
    if (c == O_GROUP)
        a->group = arg;
    else if (c == O_TYPES)
        a->types = arg;
    else if (c == O_NO_ACK)
        a->no_ack = true;
    else
        return usage_error(ctl, "unexpected option");
    return 0;
}

int cmd_tail(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"group", required_argument, NULL, O_GROUP},
        {"types", required_argument, NULL, O_TYPES},
        {"no-ack", no_argument, NULL, O_NO_ACK},
        {0, 0, 0, 0},
    };
    struct tail_args a = {.group = DEFAULT_GROUP};
    int rc = parse_options(ctl, argc, argv, opts, tail_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);

    json_t *sub = json_pack("{s:s,s:s}", "op", "subscribe", "group", a.group);
    if (!sub)
        return usage_error(ctl, "--group is not valid UTF-8");
    if (a.types) {
        json_t *types = json_array();
        char *copy = strdup(a.types), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (event_type_parse(t) < 0) {
                rc = usage_error(ctl,
                                 "--types: unknown event type \"%s\" (retry, give_up, suppress, sender_alert, "
                                 "domain_throttled)",
                                 t);
                free(copy);
                json_decref(types);
                json_decref(sub);
                return rc;
            }
            json_array_append_new(types, json_string(t));
        }
        free(copy);
        if (json_array_size(types) == 0) {
            json_decref(types);
            json_decref(sub);
            return usage_error(ctl, "--types: name at least one event type");
        }
        json_object_set_new(sub, "types", types);
    }

    /* Ctrl-C is the normal end of tail: it ends the wait for the next
     * event, and the command exits 0. */
    if (client_catch_interrupts() < 0) {
        json_decref(sub);
        return EXIT_IO;
    }

    struct client cl = {.fd = -1};
    rc = client_open(&cl, ctl);
    if (rc == 0 && send_json(&cl, sub) < 0)
        rc = EXIT_IO;
    json_decref(sub);
    const char *raw;
    size_t len;
    json_t *reply = rc ? NULL : read_reply(&cl, &raw, &len);
    if (!rc && !reply)
        rc = client_interrupted() ? 0 : EXIT_IO;
    if (reply && !json_is_true(json_object_get(reply, "ok"))) {
        if (ctl->json)
            put_line(raw, len);
        render_error(reply);
        rc = EXIT_REPLY;
    }
    json_decref(reply);
    if (rc || client_interrupted()) {
        client_close(&cl);
        flush_out();
        return rc;
    }
    if (!ctl->json)
        fprintf(stderr, "reboundctl: following events as group \"%s\" on %s (Ctrl-C to stop)\n", a.group,
                ctl->server);

    while (!client_interrupted()) {
        const char *line;
        size_t n;
        if (flush_out() < 0) {
            rc = EXIT_IO;
            break;
        }
        int r = read_line(&cl, 0, &line, &n);
        if (r == 0)
            break;
        if (r < 0) {
            rc = EXIT_IO;
            break;
        }
        json_t *j = json_loadb(line, n, 0, NULL);
        if (!json_is_object(j)) {
            json_decref(j);
            continue;
        }
        json_t *ok = json_object_get(j, "ok");
        if (ok) {
            /* The answer to an ack. */
            if (!json_is_true(ok))
                render_error(j);
            json_decref(j);
            continue;
        }
        if (ctl->json)
            put_line(line, n);
        else
            render_event(j);
        /* Acknowledge only what the reader has really got. */
        if (flush_out() < 0) {
            json_decref(j);
            rc = EXIT_IO;
            break;
        }
        json_t *eid = json_object_get(j, "eid");
        if (!a.no_ack && json_is_string(eid)) {
            json_t *ack = json_pack("{s:s,s:[O]}", "op", "ack", "ids", eid);
            int s = send_json(&cl, ack);
            json_decref(ack);
            if (s < 0) {
                json_decref(j);
                rc = client_interrupted() ? 0 : EXIT_IO;
                break;
            }
        }
        json_decref(j);
    }
    client_close(&cl);
    return rc;
}

/* ---- acting on the queue: list, retry-now, cancel --domain, hold ------- */

struct queue_args {
    const char *domain, *class_name, *campaign, *state, *due_before, *due_after, *until;
    struct page_args page;
};

static int queue_opt(struct ctl *ctl, int c, const char *arg, void *state)
{
    struct queue_args *a = state;
    switch (c) {
    case O_DOMAIN:
        a->domain = arg;
        break;
    case O_CLASS:
        a->class_name = arg;
        break;
    case O_CAMPAIGN:
        a->campaign = arg;
        break;
    case O_STATE:
        a->state = arg;
        break;
    case O_DUE_BEFORE:
        a->due_before = arg;
        break;
    case O_DUE_AFTER:
        a->due_after = arg;
        break;
    case O_UNTIL:
        a->until = arg;
        break;
    default:
        return page_opt(ctl, c, arg, &a->page);
    }
    return 0;
}

/* A time: epoch milliseconds, or +DURATION / -DURATION from now. */
static int set_time(struct ctl *ctl, json_t *req, const char *field, const char *opt, const char *s)
{
    if (!s)
        return 0;
    long long t;
    int64_t d;
    if ((s[0] == '+' || s[0] == '-') && duration_parse(s + 1, &d) == 0)
        t = now_ms() + (s[0] == '+' ? d : -d);
    else if (parse_int(s, 1, INT64_MAX, &t) < 0)
        return usage_error(ctl, "--%s: \"%s\" is neither epoch milliseconds nor +DURATION", opt, s);
    json_object_set_new(req, field, json_integer(t));
    return 0;
}

/* cancel and retry-now: ID, or --domain NAME, or --campaign NAME. */
static int selection_command(struct ctl *ctl, int argc, char **argv, const char *op)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"domain", required_argument, NULL, O_DOMAIN},
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {0, 0, 0, 0},
    };
    struct queue_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, queue_opt, &a);
    if (rc >= 0)
        return rc;
    int given = (argc - optind > 0) + (a.domain != NULL) + (a.campaign != NULL);
    if (argc - optind > 1)
        return usage_error(ctl, "one message ID only");
    if (given != 1)
        return usage_error(ctl, given ? "give one of ID, --domain and --campaign"
                                      : "give a message ID, or --domain NAME or --campaign NAME");
    json_t *req = json_pack("{s:s}", "op", op);
    if ((argc > optind && set_string(req, "id", argv[optind]) < 0) || set_string(req, "domain", a.domain) < 0 ||
        set_string(req, "campaign", a.campaign) < 0) {
        json_decref(req);
        return usage_error(ctl, "the arguments must be valid UTF-8");
    }
    return call_and_print(ctl, req);
}

int cmd_retry_now(struct ctl *ctl, int argc, char **argv)
{
    return selection_command(ctl, argc, argv, "retry_now");
}

int cmd_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        {"domain", required_argument, NULL, O_DOMAIN},
        {"class", required_argument, NULL, O_CLASS},
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {"state", required_argument, NULL, O_STATE},
        {"due-before", required_argument, NULL, O_DUE_BEFORE},
        {"due-after", required_argument, NULL, O_DUE_AFTER},
        {"all", no_argument, NULL, O_ALL},
        {"cursor", required_argument, NULL, O_CURSOR},
        {"count", required_argument, NULL, O_COUNT},
        {0, 0, 0, 0},
    };
    struct queue_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, queue_opt, &a);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return usage_error(ctl, "unexpected argument \"%s\"", argv[optind]);
    long long count = a.page.all ? 1000 : 100;
    if (a.page.count && parse_int(a.page.count, 1, 1000, &count) < 0)
        return usage_error(ctl, "--count: \"%s\" is not a number 1..1000", a.page.count);
    if (a.page.all && a.page.cursor)
        return usage_error(ctl, "--all starts at the beginning; leave out --cursor");
    json_t *req = json_pack("{s:s,s:I}", "op", "list", "count", count);
    if (set_string(req, "domain", a.domain) < 0 || set_string(req, "class", a.class_name) < 0 ||
        set_string(req, "campaign", a.campaign) < 0 || set_string(req, "state", a.state) < 0 ||
        set_string(req, "cursor", a.page.cursor) < 0) {
        json_decref(req);
        return usage_error(ctl, "the arguments must be valid UTF-8");
    }
    rc = set_time(ctl, req, "due_before", "due-before", a.due_before);
    if (!rc)
        rc = set_time(ctl, req, "due_after", "due-after", a.due_after);
    if (rc) {
        json_decref(req);
        return rc;
    }
    return a.page.all ? every_page(ctl, req) : call_and_print(ctl, req);
}

int cmd_hold(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {COMMON_OPTIONS, {"until", required_argument, NULL, O_UNTIL}, {0, 0, 0, 0}};
    struct queue_args a = {0};
    int rc = parse_options(ctl, argc, argv, opts, queue_opt, &a);
    if (rc >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_error(ctl, argc == optind ? "the domain name is missing" : "one domain name only");
    json_t *req = json_pack("{s:s}", "op", "hold");
    if (set_string(req, "domain", argv[optind]) < 0) {
        json_decref(req);
        return usage_error(ctl, "the domain name is not valid UTF-8");
    }
    rc = set_time(ctl, req, "until", "until", a.until);
    if (rc) {
        json_decref(req);
        return rc;
    }
    return call_and_print(ctl, req);
}

int cmd_release(struct ctl *ctl, int argc, char **argv)
{
    return operand_command(ctl, argc, argv, "release", "domain", "domain name");
}

int cmd_history(struct ctl *ctl, int argc, char **argv)
{
    return id_command(ctl, argc, argv, "history", false);
}
/* groups, or groups delete NAME: the consumer groups (the groups op). */
int cmd_groups(struct ctl *ctl, int argc, char **argv)
{
    int rc = parse_options(ctl, argc, argv, common_only, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (argc == optind)
        return call_and_print(ctl, json_pack("{s:s}", "op", "groups"));
    if (strcmp(argv[optind], "delete") != 0)
        return usage_error(ctl, "unexpected argument \"%s\" (groups, or groups delete NAME)", argv[optind]);
    if (argc - optind != 2)
        return usage_error(ctl, argc - optind < 2 ? "the group's name is missing" : "one group only");
    json_t *req = json_pack("{s:s}", "op", "groups");
    if (set_string(req, "delete", argv[optind + 1]) < 0) {
        json_decref(req);
        return usage_error(ctl, "the group's name is not valid UTF-8");
    }
    return call_and_print(ctl, req);
}
