/*
 * authlimit.c -- failed logins slowed down and then refused, per client
 * address, for every service that checks passwords (POP3, IMAP,
 * submission, the web UI). Each failure within the window doubles the
 * wait before the client hears it failed (0.5 s, 1 s, 2 s, ... up to 8 s);
 * after AUTHLIMIT_BLOCK_AFTER failures the address is refused outright
 * until AUTHLIMIT_WINDOW has passed since its last failure. A success
 * clears the address. The table is bounded: when full, the oldest entry
 * goes. One table per process, used from its event loop only.
 */
#include <stdlib.h>
#include <string.h>
#include "common.h"

#define SLOTS 4096
#define MAX_ENTRIES 20000

struct ent {
    char addr[46];
    unsigned failures;
    double last;
    struct ent *next;
};

struct authlimit {
    struct ent *slot[SLOTS];
    size_t n;
};

static unsigned
hash(const char *s)
{
    unsigned h = 5381;
    for (; *s; s++)
        h = h * 33 ^ (unsigned char)*s;
    return h % SLOTS;
}

struct authlimit *
authlimit_new(void)
{
    return xcalloc(1, sizeof(struct authlimit));
}

void
authlimit_free(struct authlimit **lp)
{
    struct authlimit *l = *lp;
    if (l == NULL)
        return;
    for (size_t i = 0; i < SLOTS; i++)
        for (struct ent *e = l->slot[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    free(l);
    *lp = NULL;
}

static struct ent **
find(struct authlimit *l, const char *addr)
{
    struct ent **pp = &l->slot[hash(addr)];
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->addr, addr) == 0)
            return pp;
    return pp;
}

static void
drop_oldest(struct authlimit *l)
{
    struct ent **oldest = NULL;
    for (size_t i = 0; i < SLOTS; i++)
        for (struct ent **pp = &l->slot[i]; *pp; pp = &(*pp)->next)
            if (oldest == NULL || (*pp)->last < (*oldest)->last)
                oldest = pp;
    if (oldest) {
        struct ent *e = *oldest;
        *oldest = e->next;
        free(e);
        l->n--;
    }
}

double
authlimit_blocked(struct authlimit *l, const char *addr)
{
    struct ent *e = *find(l, addr);
    if (e == NULL)
        return 0;
    double now = time_mono();
    if (now - e->last > AUTHLIMIT_WINDOW) {
        e->failures = 0;
        return 0;
    }
    return e->failures >= AUTHLIMIT_BLOCK_AFTER ? AUTHLIMIT_WINDOW - (now - e->last) : 0;
}

double
authlimit_failed(struct authlimit *l, const char *addr)
{
    struct ent **pp = find(l, addr), *e = *pp;
    double now = time_mono();
    if (e == NULL) {
        if (l->n >= MAX_ENTRIES)
            drop_oldest(l);
        pp = find(l, addr);
        e = *pp = xcalloc(1, sizeof(*e));
        str_copy(e->addr, addr, sizeof(e->addr));
        l->n++;
    }
    if (now - e->last > AUTHLIMIT_WINDOW)
        e->failures = 0;
    e->failures++;
    e->last = now;
    unsigned n = e->failures - 1 > 4 ? 4 : e->failures - 1;
    log_warn("authentication failed for [%s] (%u in a row%s)", addr, e->failures,
             e->failures >= AUTHLIMIT_BLOCK_AFTER ? ", refusing it for a while" : "");
    return 0.5 * (double)(1u << n);
}

void
authlimit_ok(struct authlimit *l, const char *addr)
{
    struct ent **pp = find(l, addr), *e = *pp;
    if (e) {
        *pp = e->next;
        free(e);
        l->n--;
    }
}
