/*
 * What every libFuzzer target here shares: the entry point's prototype
 * (the targets are built with -Wmissing-prototypes) and CHECK, which
 * makes a broken property a crash the fuzzer keeps.
 */
#ifndef REBOUND_TESTS_FUZZ_H
#define REBOUND_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            __builtin_trap();                                                                                          \
    } while (0)

#endif
