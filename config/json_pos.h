/*
 * jansson keeps no source positions for values, but a good error message
 * names the line and column of the value that is wrong. json_pos finds
 * them by walking the source text along a path.
 */
#ifndef REBOUND_CONFIG_JSON_POS_H
#define REBOUND_CONFIG_JSON_POS_H

#include <stddef.h>

/* Finds the value at path in the JSON text: path elements are object keys,
 * or array indices written "[3]"; a path element "~key" finds the key
 * itself rather than its value. Sets *line and *col (1-based) and returns 0,
 * or returns -1 when the path is not found (then line 1, column 1). */
int json_pos_find(const char *text, size_t len, const char *const *path, int depth, int *line, int *col);

#endif
