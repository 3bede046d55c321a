/*
 * authlimit.c -- failed logins slowed down and then refused, for every
 * service that checks passwords (POP3, IMAP, submission, the web UI).
 * Failures are counted under two keys: the client (its address; an IPv6
 * client by its /64) together with the account tried, and the client over
 * all accounts. Each failure within the window doubles the wait before the
 * client hears it failed (0.5 s, 1 s, 2 s, ... up to 8 s); after
 * AUTHLIMIT_BLOCK_AFTER failures for one account, or
 * AUTHLIMIT_CLIENT_BLOCK_AFTER over all, the client is refused until
 * AUTHLIMIT_WINDOW has passed since its last failure. A success clears
 * only that account's count from that client: logging in to one's own
 * account does not buy more guesses at another's. The table is bounded:
 * when full, the oldest entry goes. One table per process; callers
 * serialise access (event loop or a lock).
 */
#include <stdlib.h>
#include <string.h>
#include "util.h"

#define SLOTS 4096
#define MAX_ENTRIES 20000

struct ent {
    char key[ADDR_KEY_MAX + 320];       /* client key, then "\n" and the account */
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
find(struct authlimit *l, const char *key)
{
    struct ent **pp = &l->slot[hash(key)];
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->key, key) == 0)
            return pp;
    return pp;
}

/* The client's key, and with user the client's and the account's (case
 * folded: Alice@ and alice@ are one account). */
static void
keys(const char *addr, const char *user, char *client, char *pair, size_t size)
{
    addr_limit_key(addr, client, ADDR_KEY_MAX);
    if (user == NULL) {
        pair[0] = '\0';
        return;
    }
    str_fmt(pair, size, "%s\n%.300s", client, user);
    for (char *p = pair + strlen(client); *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
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

static double
blocked_for(struct authlimit *l, const char *key, unsigned limit, double now)
{
    struct ent *e = *find(l, key);
    if (e == NULL || now - e->last > AUTHLIMIT_WINDOW)
        return 0;
    return e->failures >= limit ? AUTHLIMIT_WINDOW - (now - e->last) : 0;
}

double
authlimit_blocked(struct authlimit *l, const char *addr, const char *user)
{
    char client[ADDR_KEY_MAX], pair[sizeof(((struct ent *)0)->key)];
    keys(addr, user, client, pair, sizeof(pair));
    double now = time_mono();
    double w = blocked_for(l, client, AUTHLIMIT_CLIENT_BLOCK_AFTER, now);
    if (pair[0]) {
        double w2 = blocked_for(l, pair, AUTHLIMIT_BLOCK_AFTER, now);
        w = w2 > w ? w2 : w;
    }
    return w;
}

static unsigned
count_failure(struct authlimit *l, const char *key, double now)
{
    struct ent **pp = find(l, key), *e = *pp;
    if (e == NULL) {
        if (l->n >= MAX_ENTRIES)
            drop_oldest(l);
        pp = find(l, key);
        e = *pp = xcalloc(1, sizeof(*e));
        str_copy(e->key, key, sizeof(e->key));
        l->n++;
    }
    if (now - e->last > AUTHLIMIT_WINDOW)
        e->failures = 0;
    e->failures++;
    e->last = now;
    return e->failures;
}

double
authlimit_failed(struct authlimit *l, const char *addr, const char *user)
{
    char client[ADDR_KEY_MAX], pair[sizeof(((struct ent *)0)->key)];
    keys(addr, user, client, pair, sizeof(pair));
    double now = time_mono();
    unsigned total = count_failure(l, client, now);
    unsigned mine = pair[0] ? count_failure(l, pair, now) : total;
    bool refusing = mine >= AUTHLIMIT_BLOCK_AFTER || total >= AUTHLIMIT_CLIENT_BLOCK_AFTER;
    unsigned n = mine - 1 > 4 ? 4 : mine - 1;
    log_warn("authentication failed for [%s] (%u in a row for this account, %u in all%s)", addr,
             mine, total, refusing ? ", refusing it for a while" : "");
    return 0.5 * (double)(1u << n);
}

void
authlimit_ok(struct authlimit *l, const char *addr, const char *user)
{
    char client[ADDR_KEY_MAX], pair[sizeof(((struct ent *)0)->key)];
    keys(addr, user, client, pair, sizeof(pair));
    if (pair[0] == '\0')
        return;
    struct ent **pp = find(l, pair), *e = *pp;
    if (e) {
        *pp = e->next;
        free(e);
        l->n--;
    }
}
