/*
 * imap_match.c -- LIST and LSUB patterns (RFC 3501 6.3.8): '*' matches
 * any characters, '%' any but the hierarchy delimiter '.', the rest
 * matches itself.
 *
 * In time proportional to |pattern| x |name| at most, whatever the input.
 * The recursive matcher this replaces retried every split of the name at
 * every wildcard: "*a*a*a*a*a*a*a*a*a*a*a*a*b" against 190 a's never
 * ended. Here the pattern is read once, one element at a time, keeping
 * the set of name positions the pattern read so far can end at; each
 * element maps that set to the next in one pass over the name. '%' stays
 * linear the same way: a position is reachable after it when some
 * position before it was, with no '.' in between -- one running flag,
 * cleared at each '.'. (A greedy matcher that backs up to the last '*'
 * is quadratic in the name once a '%' after that '*' runs into a '.'.)
 * No I/O: unit-tested and fuzzed against a plain recursive matcher.
 */
#include <stdbool.h>
#include <string.h>
#include "imap_private.h"

bool
imap_match(const char *pat, const char *name, size_t *steps_r)
{
    size_t n = strlen(name), steps = 0;
    if (n > IMAP_MATCH_NAME_MAX) {
        if (steps_r)
            *steps_r = 0;
        return false;
    }
    bool a[IMAP_MATCH_NAME_MAX + 1], b[IMAP_MATCH_NAME_MAX + 1];
    bool *cur = a, *next = b;
    memset(cur, 0, n + 1);
    cur[0] = true;
    bool alive = true;
    for (const char *p = pat; *p && alive; p++) {
        char el = *p;
        if (el == '*' || el == '%') {
            /* a run of wildcards is one: '*' if any of them is */
            while (p[1] == '*' || p[1] == '%') {
                if (p[1] == '*')
                    el = '*';
                p++;
            }
        }
        alive = false;
        if (el == '*') {
            bool r = false;
            for (size_t j = 0; j <= n; j++) {
                r = r || cur[j];
                next[j] = r;
                alive = alive || r;
            }
        } else if (el == '%') {
            bool r = cur[0];
            next[0] = r;
            alive = r;
            for (size_t j = 1; j <= n; j++) {
                r = cur[j] || (r && name[j - 1] != '.');
                next[j] = r;
                alive = alive || r;
            }
        } else {
            next[0] = false;
            for (size_t j = 0; j < n; j++) {
                next[j + 1] = cur[j] && name[j] == el;
                alive = alive || next[j + 1];
            }
        }
        steps += n + 1;
        bool *t = cur;
        cur = next;
        next = t;
    }
    if (steps_r)
        *steps_r = steps;
    return alive && cur[n];
}
