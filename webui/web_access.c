/*
 * web_access.c -- the one place that says who may see what. A superadmin
 * sees everything; a domain admin the mail, lists and stats of the domains
 * given to them (domains= of the account, else their own domain); a user
 * their own address and its +tags. Mail is a tenant's by its recipients
 * only: the envelope sender is the client's to choose, so it gives no
 * right to anything.
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

/* Is addr the mailbox user, or one of its +tags? The domains equal, and
 * addr's local part user's own, or user's own followed by "+tag": alice@
 * owns alice+news@, never the other way round (an account alice+x@ does
 * not own alice@ nor alice+y@). */
static bool
own_mailbox(const char *user, const char *addr)
{
    const char *ud = strrchr(user, '@'), *ad = strrchr(addr, '@');
    if (ud == NULL || ad == NULL || ud == user || strcasecmp(ud, ad) != 0)
        return false;
    size_t ul = (size_t)(ud - user), al = (size_t)(ad - addr);
    return al >= ul && strncasecmp(addr, user, ul) == 0 && (al == ul || addr[ul] == '+');
}

bool
web_can_address(const struct principal *p, const char *addr)
{
    if (addr == NULL)
        return false;
    if (p->role == ROLE_SUPERADMIN)
        return true;
    if (own_mailbox(p->user, addr))
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
