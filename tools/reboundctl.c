/*
 * reboundctl: the command-line client of reboundd, for people and scripts.
 *
 * Every command but `classify` and `check-policy` opens one connection to
 * the daemon (TCP HOST:PORT, or a Unix socket when the address holds a '/'),
 * sends newline-delimited JSON requests (docs/protocol.md) and prints the
 * replies; `classify` and `check-policy` need only a policy file. See
 * tools/ctl.h for which file does what; this one is the command line: the
 * help texts, the command table, the options every command accepts, main.
 *
 * Output is JSON lines when stdout is not a terminal or with --json, and a
 * readable rendering on a terminal. Exit codes: 0 ok, 1 the daemon (or the
 * offline classifier) answered ok:false or the policy is invalid, 2 usage
 * error, 3 cannot connect, time-out or I/O error.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/ctl.h"

#ifndef REBOUND_VERSION
#define REBOUND_VERSION "unknown"
#endif

/* ---- help ----------------------------------------------------------- */

static const char main_help[] =
    "Usage: reboundctl [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Talks to reboundd, the email retry scheduler, or (classify) tries SMTP\n"
    "replies against a policy file without a daemon.\n"
    "\n"
    "Commands:\n"
    "  bounce        report a failed delivery\n"
    "  delivered ID  report that a message got through\n"
    "  cancel ID     drop a pending retry, without an event (--domain, --campaign: all)\n"
    "  get ID        show what rebound knows about a message (--rcpt ADDR: a recipient)\n"
    "  suppressed    list the suppressed addresses (a page, or --all for export)\n"
    "  unsuppress ADDR  take an address off the suppressed list\n"
    "  domain NAME   show a receiving domain's state: pending, back-off, pace\n"
    "  list          list pending and awaiting messages (filters, a page or --all)\n"
    "  retry-now     make a message, a domain's or a campaign's retries due now\n"
    "  hold NAME     fire no retries for domain NAME (--until T), reports still taken\n"
    "  release NAME  end a hold: the held retries are due now\n"
    "  history ID    how a finished message ended, and its bounces\n"
    "  stats         queue depth, due counts, events, Redis link\n"
    "  groups        list the event stream's consumer groups; groups delete NAME\n"
    "  ping          check that the daemon answers\n"
    "  send [JSON]   send raw request lines (arguments, or NDJSON on stdin)\n"
    "  tail          follow events as they are emitted\n"
    "  classify      classify SMTP replies offline against a policy\n"
    "  check-policy FILE  validate a policy file\n"
    "  help [COMMAND]\n"
    "\n"
    "Options (also accepted after the command):\n"
    "  -s, --server ADDR  HOST:PORT, [IPv6]:PORT, or a Unix socket path (anything\n"
    "                     with a '/'); default $REBOUND_SERVER, else " DEFAULT_SERVER ".\n"
    "                     Several instances, comma-separated: the first that\n"
    "                     answers is used, and a request about one recipient\n"
    "                     goes straight to the instance that owns its shard\n"
    "      --token T      shared token, sent with the auth op first (default\n"
    "                     $REBOUND_TOKEN; prefer the variable: arguments are\n"
    "                     visible to other users)\n"
    "      --json         print JSON lines even on a terminal\n"
    "      --timeout D    give up waiting for the daemon after D (\"500ms\", \"30s\";\n"
    "                     0 = never); default 10s, never for tail\n"
    "  -h, --help         this help; 'reboundctl COMMAND --help' for a command\n"
    "      --version\n"
    "\n"
    "Output is JSON lines when stdout is not a terminal (or with --json).\n"
    "Exit status: 0 ok, 1 the answer was ok:false (not_found, bad_request, ...) or\n"
    "the policy is invalid, 2 usage error, 3 cannot connect, time-out or I/O error.\n";

static const char bounce_help[] =
    "Usage: reboundctl bounce --id ID --rcpt ADDR --code N [OPTIONS]\n"
    "\n"
    "Reports a failed delivery. The daemon classifies the reply, decides (retry,\n"
    "give_up, suppress), stores the decision in Redis and answers.\n"
    "\n"
    "  --id ID           message id (1-200 printable ASCII, no spaces)\n"
    "  --rcpt ADDR       recipient address\n"
    "  --code N          SMTP basic reply code (400..599)\n"
    "  --enhanced X.Y.Z  enhanced status code\n"
    "  --text T          the server's reply text\n"
    "  --campaign C      campaign, for the recipient's soft-bounce streak\n"
    "  --not-before T    earliest retry: epoch milliseconds, or +DURATION from now\n"
    "                    (\"+15m\")\n"
    "  --meta JSON       an object passed through to this message's events\n";

static const char delivered_help[] =
    "Usage: reboundctl delivered ID [--rcpt ADDR]\n"
    "\n"
    "Reports that message ID (or a retry of it) was delivered: drops its pending\n"
    "retry and resets the recipient's soft-bounce streak.\n";

static const char cancel_help[] = "Usage: reboundctl cancel ID\n"
                                  "       reboundctl cancel --domain NAME | --campaign NAME\n"
                                  "\n"
                                  "Drops the pending retry of message ID, or every message (pending or\n"
                                  "awaiting) of a receiving domain or a campaign, and prints how many.\n"
                                  "No event is emitted.\n";

static const char get_help[] = "Usage: reboundctl get ID\n"
                               "       reboundctl get --rcpt ADDR\n"
                               "\n"
                               "Shows the state of message ID: class, attempts, history, next due time,\n"
                               "and its recipient's record. With --rcpt alone, the record of recipient\n"
                               "ADDR: its soft-bounce streak and whether it is suppressed.\n";

static const char stats_help[] = "Usage: reboundctl stats\n"
                                 "\n"
                                 "Shows queue depth by class, retries due soon, events by type, the Redis\n"
                                 "link and uptime.\n";

static const char ping_help[] = "Usage: reboundctl ping\n"
                                "\n"
                                "Checks that the daemon answers. Exit status 0 when it does.\n";

static const char send_help[] =
    "Usage: reboundctl send [JSON...]\n"
    "\n"
    "Sends each argument as one request line, or with no argument every line of\n"
    "stdin (NDJSON), and prints every line the daemon sends back, as it is.\n"
    "Requests are pipelined (up to 256 unanswered); blank lines are skipped.\n"
    "Exit status 1 when any reply was ok:false.\n"
    "\n"
    "  reboundctl send '{\"op\":\"get\",\"id\":\"m1\"}'\n"
    "  reboundctl send < requests.ndjson > replies.ndjson\n";

static const char tail_help[] =
    "Usage: reboundctl tail [--group G] [--types T,T..] [--no-ack]\n"
    "\n"
    "Subscribes and prints events as they arrive, until interrupted. Each event\n"
    "is acknowledged after it was printed, so an event is printed at least once.\n"
    "Connections in one group share the events; each group sees all of them.\n"
    "\n"
    "  --group G     consumer group (default \"" DEFAULT_GROUP "\")\n"
    "  --types LIST  comma-separated: retry, give_up, suppress, sender_alert,\n"
    "                domain_throttled (default: all)\n"
    "  --no-ack      do not acknowledge: the group gets the events again later\n";

static const char classify_help[] =
    "Usage: reboundctl classify [--policy FILE] [--code N] [--enhanced X.Y.Z] [--text T]\n"
    "       reboundctl classify [--policy FILE] < replies.ndjson\n"
    "       reboundctl classify --check [--policy FILE]\n"
    "\n"
    "Classifies SMTP replies against a policy file, offline (no daemon), and\n"
    "prints what the daemon would do: class, action, the rule that matched and\n"
    "the retry windows. With --code, --enhanced or --text it classifies that one\n"
    "reply; otherwise it reads NDJSON lines {\"code\":..,\"enhanced\":..,\"text\":..}\n"
    "from stdin and writes exactly one JSON line per input line, in order (an\n"
    "invalid line gets {\"ok\":false,\"error\":{..}}; a \"req\" is echoed).\n"
    "Exit status 1 when any line was invalid.\n"
    "\n"
    "  --policy FILE  the policy (default: config/policy.json of the source tree\n"
    "                 when run from its build directory, else\n"
    "                 " REBOUND_DEFAULT_POLICY ")\n"
    "  --check        only validate the policy (same as check-policy)\n";

static const char suppressed_help[] =
    "Usage: reboundctl suppressed [--count N] [--cursor C]\n"
    "       reboundctl suppressed --all\n"
    "\n"
    "Lists the suppressed addresses (hard_invalid, chronic_soft), a page at a\n"
    "time: the reply's cursor starts the next page; \"0\" means the list is done.\n"
    "An address may show up twice across pages if the list changed meanwhile.\n"
    "\n"
    "  --count N   addresses per page, a hint (1..1000, default 100)\n"
    "  --cursor C  the cursor of the previous page (default \"0\": the first)\n"
    "  --all       every address, one JSON line each {\"rcpt\",\"reason\",\"at\"},\n"
    "              for export to your platform's suppression list\n";

static const char unsuppress_help[] =
    "Usage: reboundctl unsuppress ADDR\n"
    "\n"
    "Takes ADDR off the suppressed list and resets its soft-bounce streak, so\n"
    "its bounces are retried again. \"found\" says whether it was suppressed.\n";

static const char domain_help[] =
    "Usage: reboundctl domain NAME\n"
    "\n"
    "Shows what reboundd knows about receiving domain NAME: retries pending for\n"
    "it, its back-off (class, since, until, retries held), the throttling\n"
    "replies counted in the current window, the pace, and its sender alerts.\n";

static const char list_help[] =
    "Usage: reboundctl list [--domain NAME] [--class NAME] [--campaign NAME]\n"
    "                       [--state pending|awaiting] [--due-before T] [--due-after T]\n"
    "                       [--count N] [--cursor C | --all]\n"
    "\n"
    "Lists the messages reboundd knows, in the order they fall due: id,\n"
    "recipient, class, attempt, state and due time. A page of --count (default\n"
    "100, at most 1000) and the cursor of the next (\"0\" after the last);\n"
    "--all prints every page, one message per JSON line. T is epoch\n"
    "milliseconds, or +DURATION / -DURATION from now.\n";

static const char retry_now_help[] =
    "Usage: reboundctl retry-now ID\n"
    "       reboundctl retry-now --domain NAME | --campaign NAME\n"
    "\n"
    "Makes the pending retry of message ID, or of every message of a domain or\n"
    "a campaign, due now: each gets its retry event, at the domain's pace (a\n"
    "held domain's wait for its release). Prints how many.\n";

static const char hold_help[] =
    "Usage: reboundctl hold NAME [--until T]\n"
    "\n"
    "Holds receiving domain NAME: no retry for it fires until the hold ends (at\n"
    "T: epoch milliseconds or +DURATION; without --until, at release). Reports\n"
    "are still taken and scheduled. The hold survives a restart.\n";

static const char release_help[] =
    "Usage: reboundctl release NAME\n"
    "\n"
    "Ends the hold of domain NAME: the retries it held back are due now, and\n"
    "leave at the domain's pace. Prints how many.\n";

static const char history_help[] =
    "Usage: reboundctl history ID\n"
    "\n"
    "Shows how message ID ended (give_up, suppress, delivered) and why, with\n"
    "every bounce it had: time, code, enhanced code, class. Kept for the\n"
    "history_retention of the daemon's config (default 7 days).\n";
static const char groups_help[] =
    "Usage: reboundctl groups\n"
    "       reboundctl groups delete NAME\n"
    "\n"
    "Lists the event stream's consumer groups: name, consumers (connections\n"
    "subscribed now), pending (delivered, not acknowledged), lag (not yet read)\n"
    "and, for a group nobody is subscribed to, how long (idle_ms). With delete,\n"
    "deletes group NAME and its pending list (refused while it has subscribers).\n";

static const char check_policy_help[] =
    "Usage: reboundctl check-policy FILE\n"
    "\n"
    "Loads and validates a policy file. Exit status 0 when it is valid, 1 with\n"
    "the file, line, column and what is wrong when it is not.\n";

/* ---- the commands and the options every command accepts ------------ */

struct command {
    const char *name;
    int (*run)(struct ctl *ctl, int argc, char **argv);
    const char *help;
};

static const struct command *command_find(const char *name);

/* Handles an option every command accepts. Returns -1 when c is not one
 * of them, else 0 or an exit status to return at once (help: -2). */
static int common_option(struct ctl *ctl, int c, const char *arg, char **argv)
{
    switch (c) {
    case 's':
        ctl->server = arg;
        return 0;
    case O_JSON:
        ctl->json = true;
        return 0;
    case O_TOKEN:
        ctl->token = arg;
        return 0;
    case O_TIMEOUT:
        if (parse_timeout(arg, &ctl->timeout_ms) < 0)
            return usage_error(ctl, "--timeout: \"%s\" is not a duration (e.g. 500ms, 30s; 0 = never)", arg);
        return 0;
    case 'h': {
        const struct command *cmd = ctl->cmd ? command_find(ctl->cmd) : NULL;
        fputs(cmd ? cmd->help : main_help, stdout);
        return -2;
    }
    case '?':
        return usage_error(ctl, "unknown option or missing argument: %s", argv[optind - 1]);
    default:
        return -1;
    }
}

int parse_options(struct ctl *ctl, int argc, char **argv, const struct option *longopts,
                  int (*handle)(struct ctl *ctl, int c, const char *arg, void *state), void *state)
{
    optind = 0; /* glibc: start over, this is a new argument vector */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
        int rc = common_option(ctl, c, optarg, argv);
        if (rc == -2)
            return 0;
        if (rc > 0)
            return rc;
        if (rc == 0)
            continue;
        rc = handle ? handle(ctl, c, optarg, state) : usage_error(ctl, "unexpected option");
        if (rc)
            return rc;
    }
    return -1;
}

const struct option common_only[] = {COMMON_OPTIONS, {0, 0, 0, 0}};

static int cmd_help(struct ctl *ctl, int argc, char **argv);

static const struct command commands[] = {
    {"bounce", cmd_bounce, bounce_help},
    {"delivered", cmd_delivered, delivered_help},
    {"cancel", cmd_cancel, cancel_help},
    {"get", cmd_get, get_help},
    {"suppressed", cmd_suppressed, suppressed_help},
    {"unsuppress", cmd_unsuppress, unsuppress_help},
    {"domain", cmd_domain, domain_help},
    {"list", cmd_list, list_help},
    {"retry-now", cmd_retry_now, retry_now_help},
    {"hold", cmd_hold, hold_help},
    {"release", cmd_release, release_help},
    {"history", cmd_history, history_help},
    {"stats", cmd_stats, stats_help},
    {"groups", cmd_groups, groups_help},
    {"ping", cmd_ping, ping_help},
    {"send", cmd_send, send_help},
    {"tail", cmd_tail, tail_help},
    {"classify", cmd_classify, classify_help},
    {"check-policy", cmd_check_policy, check_policy_help},
    {"help", cmd_help, main_help},
};

static const struct command *command_find(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int cmd_help(struct ctl *ctl, int argc, char **argv)
{
    if (argc <= 1) {
        fputs(main_help, stdout);
        return 0;
    }
    const struct command *cmd = command_find(argv[1]);
    if (!cmd) {
        ctl->cmd = NULL;
        return usage_error(ctl, "unknown command \"%s\"", argv[1]);
    }
    fputs(cmd->help, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct ctl ctl = {
        .server = getenv("REBOUND_SERVER"),
        .token = getenv("REBOUND_TOKEN"),
        .timeout_ms = DEFAULT_TIMEOUT_MS,
        .json = !isatty(STDOUT_FILENO),
    };
    if (!ctl.server || !ctl.server[0])
        ctl.server = DEFAULT_SERVER;

    static const struct option opts[] = {COMMON_OPTIONS, {"version", no_argument, NULL, O_VERSION}, {0, 0, 0, 0}};
    opterr = 0;
    int c;
    /* '+': stop at the command; what follows belongs to it. */
    while ((c = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
        if (c == O_VERSION) {
            printf("reboundctl %s\n", REBOUND_VERSION);
            return 0;
        }
        int rc = common_option(&ctl, c, optarg, argv);
        if (rc == -2)
            return 0;
        if (rc > 0)
            return rc;
    }
    if (optind >= argc)
        return usage_error(&ctl, "no command given");
    const struct command *cmd = command_find(argv[optind]);
    if (!cmd)
        return usage_error(&ctl, "unknown command \"%s\"", argv[optind]);
    ctl.cmd = cmd->name;
    return cmd->run(&ctl, argc - optind, argv + optind);
}
