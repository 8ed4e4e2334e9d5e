/*
 * libFuzzer entry point over the config loader: the whole input is a
 * config file. Loading is all or nothing: on failure the config is the
 * defaults still; on success validation and the dump must not fault, and
 * the dump of a valid config must load back to the same dump.
 */
#include "tests/fuzz/fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

static char *dump(const struct config *cfg, size_t *len)
{
    char *buf = NULL;
    FILE *m = open_memstream(&buf, len);
    CHECK(m != NULL);
    config_dump(cfg, m);
    CHECK(fclose(m) == 0);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config cfg, dflt;
    char err[512];
    size_t dlen, len;

    config_defaults(&cfg, "/etc/rebound/policy.json");
    config_defaults(&dflt, "/etc/rebound/policy.json");
    err[0] = '\0';
    if (config_load_text(&cfg, (const char *)data, size, "fuzz", err, sizeof err) != 0) {
        CHECK(err[0] != '\0');
        char *a = dump(&cfg, &len), *b = dump(&dflt, &dlen);
        CHECK(len == dlen && memcmp(a, b, len) == 0);
        free(a);
        free(b);
    } else if (config_validate(&cfg, err, sizeof err) == 0 && cfg.redis_password[0] == '\0' &&
               cfg.token[0] == '\0' && strstr(cfg.redis, "@") == NULL) {
        /* Without secrets (masked in the dump) the dump loads back. */
        char *a = dump(&cfg, &len);
        struct config back;
        config_defaults(&back, "/elsewhere");
        CHECK(config_load_text(&back, a, len, "dump", err, sizeof err) == 0);
        char *b = dump(&back, &dlen);
        CHECK(len == dlen && memcmp(a, b, len) == 0);
        free(a);
        free(b);
        config_free(&back);
    }
    config_free(&cfg);
    config_free(&dflt);
    return 0;
}
