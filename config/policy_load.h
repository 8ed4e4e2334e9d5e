/*
 * Loading the policy file (JSON, docs/policy.md) into a struct policy.
 */
#ifndef REBOUND_CONFIG_POLICY_LOAD_H
#define REBOUND_CONFIG_POLICY_LOAD_H

#include <stddef.h>

#include "queue/policy.h"

/* Bounds the loader enforces (docs/policy.md): attempt limits are at most
 * POLICY_LOAD_MAX_ATTEMPTS, so a forecast never has more windows than
 * that; every duration is at most POLICY_LOAD_MAX_DURATION_MS (3650d), so
 * sums of delays cannot overflow. */
#define POLICY_LOAD_MAX_ATTEMPTS 100
#define POLICY_LOAD_MAX_DURATION_MS (3650LL * 86400 * 1000)

/* Loads and validates a policy file. Returns a new policy (free it with
 * policy_free), or NULL with "file:line:column: what is wrong" in err. */
struct policy *policy_load_file(const char *path, char *err, size_t errlen);
/* The same from text in memory; name stands for the file in messages. */
struct policy *policy_load_string(const char *text, size_t len, const char *name, char *err, size_t errlen);

#endif
