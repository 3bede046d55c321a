/*
 * smtp_from.c -- the addresses a From header field claims (RFC 5322 3.4,
 * an address list, read leniently), for the sender ownership check at the
 * end of data. Pure: a field value in, addresses out; no I/O.
 *
 * Read as a mail reader shows them: the address in angle brackets,
 * comments left out, quoted local parts unquoted ("ceo"@b is ceo@b),
 * groups opened up, a source route dropped. A display name that holds an
 * '@' outside quotes ("ceo@b <me@a>") is taken for an address as well, and
 * text without brackets for one whatever it looks like, so no way of
 * writing the field hides an address it shows.
 */
#include <stdbool.h>
#include <string.h>
#include "gateway.h"

struct buf {
    char s[SMTP_ADDR_MAX + 1];
    size_t n;
};

struct from_parse {
    char (*out)[SMTP_ADDR_MAX + 1];
    size_t max, count;
    bool bad;                       /* too many addresses, or one too long */
    struct buf angle;               /* inside <...> */
    struct buf plain;               /* outside, quoted text unquoted */
    struct buf bare;                /* outside, quoted text left out */
    bool in_angle, had_angle;
};

static void
put(struct from_parse *p, struct buf *b, char c)
{
    if (b->n == SMTP_ADDR_MAX) {
        p->bad = true;
        return;
    }
    b->s[b->n++] = c;
}

static void
emit(struct from_parse *p, struct buf *b)
{
    b->s[b->n] = '\0';
    const char *a = b->s;
    if (a[0] == '@' && strchr(a, ':'))          /* source route: @x,@y:local@domain */
        a = strchr(a, ':') + 1;
    if (a[0] != '\0') {
        if (p->count == p->max)
            p->bad = true;
        else
            memcpy(p->out[p->count++], a, strlen(a) + 1);
    }
    b->n = 0;
}

/* The end of one mailbox (a comma, a semicolon, the end of the field). */
static void
mailbox_end(struct from_parse *p)
{
    if (p->in_angle)
        emit(p, &p->angle);                     /* a '<' never closed */
    p->bare.s[p->bare.n] = '\0';
    if (p->had_angle && memchr(p->bare.s, '@', p->bare.n))
        emit(p, &p->bare);
    else if (!p->had_angle)
        emit(p, &p->plain);
    p->angle.n = p->plain.n = p->bare.n = 0;
    p->in_angle = p->had_angle = false;
}

int
smtp_from_addrs(const char *v, size_t len, char (*out)[SMTP_ADDR_MAX + 1], size_t max)
{
    struct from_parse p;
    memset(&p, 0, sizeof(p));
    p.out = out;
    p.max = max;
    bool quoted = false;
    unsigned depth = 0;                         /* comments nest */
    for (size_t i = 0; i < len && !p.bad; i++) {
        char c = v[i];
        if (c == '\r' || c == '\n')
            continue;
        if (quoted) {
            if (c == '\\' && i + 1 < len)
                c = v[++i];
            else if (c == '"') {
                quoted = false;
                continue;
            }
            put(&p, p.in_angle ? &p.angle : &p.plain, c);
            continue;
        }
        if (depth > 0) {
            if (c == '\\' && i + 1 < len)
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            continue;
        }
        switch (c) {
        case '"':
            quoted = true;
            break;
        case '(':
            depth = 1;
            break;
        case ' ': case '\t':
            break;
        case '<':
            if (p.in_angle)
                emit(&p, &p.angle);
            p.in_angle = p.had_angle = true;
            break;
        case '>':
            if (p.in_angle) {
                emit(&p, &p.angle);
                p.in_angle = false;
            }
            break;
        case ',':
        case ';':
            if (p.in_angle && c == ',') {       /* a source route's list */
                put(&p, &p.angle, c);
                break;
            }
            mailbox_end(&p);
            break;
        case ':':
            if (p.in_angle) {
                put(&p, &p.angle, c);
                break;
            }
            /* a group's name: dropped, unless it shows an address */
            if (memchr(p.bare.s, '@', p.bare.n))
                emit(&p, &p.bare);
            p.plain.n = p.bare.n = 0;
            break;
        default:
            if (p.in_angle) {
                put(&p, &p.angle, c);
            } else {
                put(&p, &p.plain, c);
                put(&p, &p.bare, c);
            }
        }
    }
    if (!p.bad)
        mailbox_end(&p);
    return p.bad ? -1 : (int)p.count;
}
