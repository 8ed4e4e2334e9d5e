#include "base/daemon.h"

#include <time.h>

static struct daemon the_daemon;
struct daemon *rbd = &the_daemon;

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
