/*
 * Which policy file a program uses when it is not told. The same order for
 * reboundd and reboundctl, so that a policy found by one is found by the
 * other (docs/operations.md, "Which policy file"):
 *
 *   1. --policy FILE on the command line;
 *   2. the "policy" key of the config file (reboundd -c);
 *   3. the source tree's config/policy.json, when the program runs from
 *      the build directory of that tree (a clone that was just built);
 *   4. the installed policy, /etc/rebound/policy.json for prefix /usr.
 */
#ifndef REBOUND_CONFIG_POLICY_PATH_H
#define REBOUND_CONFIG_POLICY_PATH_H

#include <stdbool.h>

/* What the choice depends on, gathered by the caller. A NULL string is an
 * absent fact. */
struct policy_search {
    const char *flag;          /* --policy, or NULL */
    const char *config_key;    /* the config file's "policy", or NULL */
    const char *exe_dir;       /* real directory of the running binary */
    const char *build_dir;     /* real build directory this binary was compiled in */
    const char *source_policy; /* that tree's config/policy.json */
    bool source_policy_exists;
    const char *installed; /* the installed default; never NULL */
};

/* Returns the policy path to use: one of the strings of *s (not a copy),
 * in the order above. Pure: it touches no file. */
const char *policy_path_choose(const struct policy_search *s);

/* The default when neither a flag nor a config file names a policy: the
 * source tree's policy for a binary running in its build directory,
 * `installed` otherwise. Looks at /proc/self/exe and at the file. Returns
 * either `installed` or a static string; the caller frees nothing. */
const char *policy_path_default(const char *installed);

#endif
