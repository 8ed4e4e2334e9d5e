#include "schedule/entry.h"

#include <assert.h>

#include "base/daemon.h"
#include "schedule/domains.h"

static struct entry_hooks hooks;

void entry_set_hooks(const struct entry_hooks *h)
{
    hooks = *h;
}

static void counts_leave(const struct entry *e)
{
    if (e->state == ENTRY_PENDING) {
        assert(rbd->npending > 0 && rbd->pending_by_class[e->class_idx] > 0);
        rbd->npending--;
        rbd->pending_by_class[e->class_idx]--;
        domains_pending(entry_domain(e), -1);
    } else if (e->state == ENTRY_AWAITING) {
        assert(rbd->nawaiting > 0);
        rbd->nawaiting--;
    }
}

static void counts_enter(const struct entry *e)
{
    if (e->state == ENTRY_PENDING) {
        rbd->npending++;
        rbd->pending_by_class[e->class_idx]++;
        domains_pending(entry_domain(e), 1);
    } else if (e->state == ENTRY_AWAITING) {
        rbd->nawaiting++;
    }
}

/* The state an entry is left in must be one the rest of the daemon can
 * read: a known state, and a class of the policy for a retry. */
static void check_left(const struct entry *e)
{
    (void)e;
    assert(e->state == ENTRY_NEW || e->state == ENTRY_PENDING || e->state == ENTRY_AWAITING);
    assert(e->state == ENTRY_NEW || !rbd->policy || e->class_idx < rbd->policy->nclasses);
    assert(!(e->flags & (ENTRY_BUSY | ENTRY_FIRING)));
}

void entry_become(struct entry *e, enum entry_state to, const struct entry_facts *f)
{
    /* Decisions are made on committed state only. */
    assert(!(e->flags & (ENTRY_BUSY | ENTRY_FIRING)));
    assert(f || to != ENTRY_AWAITING || e->state == ENTRY_PENDING);
    assert(!f || (f->attempt >= 0 && f->attempt <= UINT16_MAX && f->class_idx >= 0 && f->class_idx <= UINT8_MAX));
    counts_leave(e);
    e->state = (uint8_t)to;
    if (f) {
        e->class_idx = (uint8_t)f->class_idx;
        e->attempt = (uint16_t)f->attempt;
        e->first_ms = f->first_ms;
        entry_set_domain(e, f->domain);
    }
    counts_enter(e);
    check_left(e);
}

void entry_settle(struct entry *e)
{
    hooks.run_waiters(e);
    if (e->state == ENTRY_NEW && !(e->flags & ENTRY_BUSY) && !entry_has_waiters(e))
        entry_forget(e);
}

void entry_forget(struct entry *e)
{
    assert(!entry_has_waiters(e));
    entry_become(e, ENTRY_NEW, NULL);
    entry_set_domain(e, 0);
    sched_remove(rbd->sched, e);
}

struct due_walk {
    int64_t now;
    struct due_counts c;
};

static void count_due(struct entry *e, void *arg)
{
    struct due_walk *w = arg;
    if (e->state != ENTRY_PENDING || !entry_scheduled(e))
        return;
    int64_t in = e->node.due_ms - w->now;
    if (in <= 60000)
        w->c.minute++;
    if (in <= 3600000)
        w->c.hour++;
    if (in <= 86400000)
        w->c.day++;
}

struct due_counts entry_due_counts(int64_t now)
{
    struct due_walk w = {.now = now};
    if (rbd->sched)
        sched_foreach(rbd->sched, count_due, &w);
    return w.c;
}
