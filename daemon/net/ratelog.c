#include "net/ratelog.h"

#include <stdarg.h>
#include <stdio.h>

#include "base/daemon.h"
#include "base/log.h"

void ratelog_warn(struct ratelog *rl, const char *fmt, ...)
{
    int64_t now = now_ms();
    if (rl->last_ms != 0 && now - rl->last_ms < RATELOG_INTERVAL_MS) {
        rl->suppressed++;
        return;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (rl->suppressed)
        log_warn("%s (and %llu more like it in the last %lld s)", msg, (unsigned long long)rl->suppressed,
                 (long long)((now - rl->last_ms) / 1000));
    else
        log_warn("%s", msg);
    rl->last_ms = now;
    rl->suppressed = 0;
}
