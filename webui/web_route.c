/*
 * web_route.c -- the pure parsing of a request's path and cookies (no
 * I/O, fuzzed by tests/fuzz/fuzz_web.c).
 */
#include <stdlib.h>
#include <string.h>
#include "web_private.h"

bool
web_route_match(const char *pattern, const char *path, char **args, size_t *nargs)
{
    *nargs = 0;
    while (*pattern && *path) {
        if (*pattern == '*') {
            const char *end = strchr(path, '/');
            size_t n = end ? (size_t)(end - path) : strlen(path);
            if (n == 0 || *nargs >= 4)
                return false;
            args[(*nargs)++] = xstrndup(path, n);
            path += n;
            pattern++;
            continue;
        }
        if (*pattern != *path)
            return false;
        pattern++;
        path++;
    }
    return *pattern == '\0' && *path == '\0';
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
