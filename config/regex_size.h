/*
 * How large an operator's regular expression becomes once compiled.
 *
 * The C library compiles a bounded repetition by copying what it repeats:
 * "x{255}{255}" is 65,025 copies of x, and each nesting level multiplies.
 * A policy of a few kilobytes could so make regcomp take gigabytes and
 * seconds before reboundd even starts. The policy loader measures each
 * pattern with regex_positions first and refuses one past its budget.
 */
#ifndef REBOUND_CONFIG_REGEX_SIZE_H
#define REBOUND_CONFIG_REGEX_SIZE_H

#include <stdbool.h>
#include <stdint.h>

/* The number of positions (literal characters, bracket expressions, '.',
 * groups) of the POSIX extended expression `pattern` after every
 * repetition is copied out: x{m} is m copies of x, x{m,} m + 1, x{m,n}
 * and x{,n} n, x+ two, x* and x? one; a group counts its contents plus
 * one; alternatives add up. An upper estimate of what the compiled form
 * holds, exact for the grammar above, saturating at `cap` + 1 (it stops
 * counting once past cap). Malformed patterns are measured as far as they
 * go: regcomp reports their errors. */
uint64_t regex_positions(const char *pattern, uint64_t cap);

/* True when `pattern` holds a back-reference (\1 to \9 outside a bracket
 * expression). The C library matches those by backtracking, in time
 * exponential in the reply's length, and a reply's text comes from a
 * remote server: the policy loader refuses them. */
bool regex_has_backref(const char *pattern);

#endif
