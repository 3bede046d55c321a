/*
 * web_access.c -- the one place that says who may see what. A superadmin
 * sees everything; a domain admin the mail, lists and stats of the domains
 * given to them (domains= of the account, else their own domain); a user
 * their own address (with +tags).
 */
#include <string.h>
#include <strings.h>
#include "web_private.h"

bool
web_can_domain(const struct principal *p, const char *domain)
{
    if (p->role == ROLE_SUPERADMIN)
        return true;
    if (p->role != ROLE_ADMIN || domain == NULL || domain[0] == '\0')
        return false;
    for (size_t i = 0; i < p->ndomains; i++)
        if (strcasecmp(p->domains[i], domain) == 0)
            return true;
    return false;
}

/* a and b the same mailbox: local parts equal up to a +tag, domains equal. */
static bool
same_mailbox(const char *a, const char *b)
{
    const char *ad = strrchr(a, '@'), *bd = strrchr(b, '@');
    if (ad == NULL || bd == NULL || strcasecmp(ad, bd) != 0)
        return false;
    size_t al = (size_t)(ad - a), bl = (size_t)(bd - b);
    const char *plus = memchr(a, '+', al);
    if (plus)
        al = (size_t)(plus - a);
    plus = memchr(b, '+', bl);
    if (plus)
        bl = (size_t)(plus - b);
    return al == bl && strncasecmp(a, b, al) == 0;
}

bool
web_can_address(const struct principal *p, const char *addr)
{
    if (addr == NULL)
        return false;
    if (p->role == ROLE_SUPERADMIN)
        return true;
    if (same_mailbox(addr, p->user))
        return true;
    const char *at = strrchr(addr, '@');
    return p->role == ROLE_ADMIN && at && web_can_domain(p, at + 1);
}

bool
web_can_scope(const struct principal *p, const char *scope)
{
    if (strcmp(scope, "global") == 0)
        return p->role == ROLE_SUPERADMIN;
    if (strchr(scope, '@'))
        return web_can_address(p, scope);
    return web_can_domain(p, scope);
}
