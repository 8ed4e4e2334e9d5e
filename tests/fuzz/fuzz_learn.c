/*
 * libFuzzer entry point over a receiving domain's learned state as Redis
 * hands it back (queue/learn.h): learn_decode must refuse anything but the
 * canonical form, and what it accepts must encode back to the same bytes
 * and stay usable (estimate, view, further outcomes) without overflow.
 */
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "queue/learn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes, so that reading past it is caught */
    char *text = malloc(size ? size : 1);
    CHECK(text != NULL);
    memcpy(text, data, size);

    struct learn_domain d;
    if (learn_decode(&d, text, size) == 0) {
        char buf[LEARN_ENCODED_MAX];
        size_t n = learn_encode(&d, buf, sizeof buf);
        CHECK(n == size && memcmp(buf, text, size) == 0);
        for (int i = 0; i < LEARN_SLOTS; i++) {
            uint32_t key = d.slots[i].key;
            if (key == 0)
                continue;
            struct learn_view v;
            learn_view(&d, key, &v);
            CHECK(v.known);
            int64_t accept;
            if (learn_estimate(&d, key, 1, 10, 0, INT64_MAX / 2, &accept))
                CHECK(accept >= 0);
            learn_deferred(&d, key, INT64_MAX, INT64_MAX / 2);
            learn_delivered(&d, key, 1, INT64_MAX, INT64_MAX / 2);
        }
        CHECK(learn_encode(&d, buf, sizeof buf) > 0);
    } else {
        /* a refused text leaves the state empty */
        for (int i = 0; i < LEARN_SLOTS; i++)
            CHECK(d.slots[i].key == 0);
    }
    free(text);
    return 0;
}
