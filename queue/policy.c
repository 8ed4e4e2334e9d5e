/*
 * The policy's few functions of its own. A policy is plain data built by
 * the loader (config/policy_load.c) and read by classify.c and decide.c.
 */
#include "queue/policy.h"

#include <regex.h>
#include <stdlib.h>
#include <string.h>

/* Returns the index of the class called name (exact, case-sensitive), or
 * -1. name may be NULL (then -1). */
int policy_class_find(const struct policy *p, const char *name)
{
    /* A name that long cannot be stored, so matching its first bytes would
     * be a false hit. */
    if (!p || !name || strlen(name) >= POLICY_NAME_MAX)
        return -1;
    for (int i = 0; i < p->nclasses; i++)
        if (strncmp(p->classes[i].name, name, POLICY_NAME_MAX) == 0)
            return i;
    return -1;
}

/* Frees a policy made by the loader: every rule's name and texts (a
 * compiled regex is regfree()d, then freed), the rules, then p itself.
 * NULL is a no-op. */
void policy_free(struct policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nrules; i++) {
        struct policy_rule *r = &p->rules[i];
        free(r->name);
        for (size_t j = 0; j < r->ntexts; j++) {
            struct policy_text *t = &r->texts[j];
            free(t->pattern);
            if (t->regex) {
                regfree(t->regex);
                free(t->regex);
            }
        }
        free(r->texts);
    }
    free(p->rules);
    free(p);
}

/* Returns the action's name in the protocol: "retry", "give_up",
 * "suppress" (a static string), or "unknown". */
const char *action_name(enum action a)
{
    switch (a) {
    case ACTION_RETRY:
        return "retry";
    case ACTION_GIVE_UP:
        return "give_up";
    case ACTION_SUPPRESS:
        return "suppress";
    }
    return "unknown";
}
