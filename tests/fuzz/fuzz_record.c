/*
 * libFuzzer entry point over the stored records: a message's record (the
 * current compact form and the legacy forms with epoch times and a JSON
 * history) through record_parse and record_json, which `get` and the
 * start-up load use, and a recipient's streak record through
 * rcpt_record_parse. Redis hands these over as counted strings, so the
 * input is given without a terminating NUL.
 *
 * Byte 0 picks the parser (even: message, odd: recipient). Checked
 * besides the sanitizers: every pointer the parsers return lies inside
 * the input, and get's view of a parsed record is an object that encodes.
 */
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "proto/record.h"

static void check_inside(const char *p, size_t n, const char *rec, size_t len)
{
    CHECK(n == 0 || (p >= rec && p + n <= rec + len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool msg = (data[0] & 1) == 0;
    size--;
    /* a copy of exactly size bytes, so that reading past it is caught */
    char *rec = malloc(size ? size : 1);
    CHECK(rec != NULL);
    memcpy(rec, data + 1, size);

    if (msg) {
        struct record r;
        if (record_parse(rec, size, &r) == 0) {
            CHECK(r.state == 'P' || r.state == 'A');
            CHECK(r.attempt >= 0);
            check_inside(r.class_name, r.class_len, rec, size);
            check_inside(r.who, r.who_len, rec, size);
            check_inside(r.history, r.history_len, rec, size);
            if (r.rcpt_len)
                check_inside(r.rcpt, r.rcpt_len, rec, size);
            json_t *o = record_json(&r, "m-1", 3);
            CHECK(json_is_object(o));
            char *text = json_dumps(o, JSON_COMPACT);
            CHECK(text != NULL);
            free(text);
            json_decref(o);
        }
    } else {
        struct rcpt_record r;
        if (rcpt_record_parse(rec, size, &r) == 0) {
            check_inside(r.classes, r.classes_len, rec, size);
            check_inside(r.campaign, r.campaign_len, rec, size);
        }
    }
    free(rec);
    return 0;
}
