/*
 * The classify dry run's answer. Everything here is read from the policy
 * and from the queue's own functions (classify_action, decide_forecast),
 * so the explanation cannot drift from what the daemon would really do.
 */
#include "config/explain.h"

#include <stdbool.h>
#include <stdint.h>

#include "config/policy_load.h"
#include "queue/decide.h"

/* Returns a new JSON object (the caller owns the reference) describing
 * what the policy does with the classified reply c: class, action, the
 * rule that matched (null for a fallback), the code and enhanced code used,
 * alert and counts_streak, stated_wait_ms when the server named a wait,
 * the forecast of retry windows (empty unless the action is retry) and,
 * for retry, give_up_after_ms (the class's max age, else the policy's). */
json_t *explain_classification(const struct policy *p, const struct classification *c)
{
    const struct policy_class *cls = &p->classes[c->class_idx];
    enum action action = classify_action(p, c->class_idx, c->code);
    bool is_4xx = c->code >= 400 && c->code <= 499;
    json_t *o = json_object(), *forecast = json_array();

    json_object_set_new(o, "class", json_string(cls->name));
    json_object_set_new(o, "action", json_string(action_name(action)));
    if (c->rule_idx >= 0 && (size_t)c->rule_idx < p->nrules)
        json_object_set_new(o, "rule", json_string(p->rules[c->rule_idx].name));
    else
        json_object_set_new(o, "rule", json_null());
    json_object_set_new(o, "code", json_integer(c->code));
    if (c->enhanced[0] != '\0')
        json_object_set_new(o, "enhanced", json_string(c->enhanced));
    json_object_set_new(o, "alert", json_boolean(is_4xx ? cls->alert_4xx : cls->alert_5xx));
    json_object_set_new(o, "counts_streak", json_boolean(cls->counts_streak));
    if (c->stated_wait_ms > 0)
        json_object_set_new(o, "stated_wait_ms", json_integer(c->stated_wait_ms));

    if (action == ACTION_RETRY) {
        /* The loader caps every attempt limit at POLICY_LOAD_MAX_ATTEMPTS,
         * so this holds every window decide_forecast can produce. */
        int64_t lo[POLICY_LOAD_MAX_ATTEMPTS], hi[POLICY_LOAD_MAX_ATTEMPTS];
        int n = decide_forecast(p, c->class_idx, c->code, lo, hi, POLICY_LOAD_MAX_ATTEMPTS);
        for (int i = 0; i < n; i++) {
            json_t *w = json_object();
            json_object_set_new(w, "attempt", json_integer(i + 1));
            json_object_set_new(w, "after_min_ms", json_integer(lo[i]));
            json_object_set_new(w, "after_max_ms", json_integer(hi[i]));
            json_array_append_new(forecast, w);
        }
    }
    json_object_set_new(o, "forecast", forecast);
    if (action == ACTION_RETRY)
        json_object_set_new(o, "give_up_after_ms", json_integer(cls->max_age_ms > 0 ? cls->max_age_ms : p->max_age_ms));
    return o;
}
