/*
 * web_route.c -- the pure parsing of a request's path and cookies, and
 * the route a request takes (no I/O, fuzzed by tests/fuzz/fuzz_web.c).
 */
#include <stdlib.h>
#include <string.h>
#include "../common/util.h"
#include "web_private.h"

/* The segments are copied only once the whole path fits: a path that
 * does not fit allocates nothing, so no caller has anything to free. */
bool
web_route_match(const char *pattern, const char *path, char **args, size_t *nargs)
{
    const char *seg[4];
    size_t len[4], n = 0;
    *nargs = 0;
    while (*pattern && *path) {
        if (*pattern == '*') {
            const char *end = strchr(path, '/');
            size_t l = end ? (size_t)(end - path) : strlen(path);
            if (l == 0 || n >= 4)
                return false;
            seg[n] = path;
            len[n++] = l;
            path += l;
            pattern++;
            continue;
        }
        if (*pattern != *path)
            return false;
        pattern++;
        path++;
    }
    if (*pattern != '\0' || *path != '\0')
        return false;
    for (size_t i = 0; args && i < n; i++)
        args[i] = xstrndup(seg[i], len[i]);
    *nargs = args ? n : 0;
    return true;
}

const struct web_route *
web_route_find(const struct web_route *table, size_t n, enum web_method method, const char *path,
               char **args, size_t *nargs, int *status_r)
{
    bool path_known = false;
    *nargs = 0;
    for (size_t i = 0; i < n; i++) {
        size_t na;
        if (!web_route_match(table[i].pattern, path, NULL, &na))
            continue;
        if (table[i].method == method) {
            web_route_match(table[i].pattern, path, args, nargs);
            return &table[i];
        }
        path_known = true;
    }
    *status_r = path_known ? 405 : 404;
    return NULL;
}

void
web_route_args_free(char **args, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(args[i]);
        args[i] = NULL;
    }
}

void
web_cookie_value(const char *cookies, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *p = cookies; p && *p;) {
        while (*p == ' ' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = n - nl - 1;
            if (vl < size) {
                memcpy(out, p + nl + 1, vl);
                out[vl] = '\0';
            }
            return;
        }
        p = end;
    }
}
