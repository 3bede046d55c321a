/*
 * imap_envelope.c -- FETCH ENVELOPE (RFC 3501 7.4.2) and the address lists
 * it is made of: RFC 5322 address-list syntax read leniently, token by
 * token (quoted strings, comments, domain literals, angle addresses with
 * source routes, groups), into (name adl mailbox host) per address, a
 * group as its start (NIL NIL name NIL) and end (NIL NIL NIL NIL). A
 * comment names an address that has no display name ("u@d (Real Name)").
 * SORT uses the first address of a list (imap_first_address).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include "../common/util.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "mime_struct.h"

#define WORD_MAX 1024
#define ADDRS_MAX 1000

struct addr {
    char name[WORD_MAX], adl[256], mailbox[WORD_MAX], host[WORD_MAX];
    bool has_name, has_adl, has_host;
    int kind;                   /* 0 address, 1 group start, 2 group end */
};

struct lexer {
    const char *p, *end;
    char comment[WORD_MAX];     /* the last comment seen */
};

enum tok { T_END, T_WORD, T_QUOTED, T_SPECIAL };

static void
skip_cfws(struct lexer *lx)
{
    while (lx->p < lx->end) {
        char c = *lx->p;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            lx->p++;
        } else if (c == '(') {
            int depth = 0;
            size_t o = 0;
            do {
                c = *lx->p++;
                if (c == '\\' && lx->p < lx->end) {
                    c = *lx->p++;
                } else if (c == '(') {
                    if (depth++ == 0)
                        continue;
                } else if (c == ')') {
                    if (--depth == 0)
                        break;
                }
                if (c != '\r' && c != '\n' && o + 1 < sizeof(lx->comment))
                    lx->comment[o++] = c == '\t' ? ' ' : c;
            } while (lx->p < lx->end && depth > 0);
            while (o > 0 && lx->comment[o - 1] == ' ')
                o--;
            lx->comment[o] = '\0';
        } else {
            break;
        }
    }
}

/* The next token: a word (atom or dot-atom), a quoted string (unquoted
 * into buf), a domain literal (as a word), or one special character. */
static enum tok
next(struct lexer *lx, char *buf, size_t size, char *special)
{
    skip_cfws(lx);
    if (lx->p >= lx->end)
        return T_END;
    char c = *lx->p;
    size_t o = 0;
    if (c == '"') {
        lx->p++;
        while (lx->p < lx->end && *lx->p != '"') {
            c = *lx->p++;
            if (c == '\\' && lx->p < lx->end)
                c = *lx->p++;
            if (c != '\r' && c != '\n' && o + 1 < size)
                buf[o++] = c;
        }
        if (lx->p < lx->end)
            lx->p++;
        buf[o] = '\0';
        return T_QUOTED;
    }
    if (c == '[') {
        while (lx->p < lx->end && *lx->p != ']') {
            if (o + 1 < size)
                buf[o++] = *lx->p;
            lx->p++;
        }
        if (lx->p < lx->end && o + 1 < size)
            buf[o++] = *lx->p++;
        buf[o] = '\0';
        return T_WORD;
    }
    if (strchr("<>@,;:\\\".[]()", c)) {
        lx->p++;
        *special = c;
        return T_SPECIAL;
    }
    while (lx->p < lx->end) {
        c = *lx->p;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || strchr("<>@,;:\\\"[]()", c))
            break;
        if (o + 1 < size)
            buf[o++] = c;
        lx->p++;
    }
    buf[o] = '\0';
    return T_WORD;
}

static void
append(char *dst, size_t size, const char *src, bool space)
{
    size_t l = strlen(dst);
    if (space && l && l + 1 < size)
        dst[l++] = ' ';
    str_copy(dst + l, src, size - l);
}

/* The address inside < >, the '<' read: [@route,@route:]local@domain. */
static void
angle(struct lexer *lx, struct addr *a)
{
    char w[WORD_MAX], sp;
    enum tok t;
    bool at = false;
    /* a source route first */
    skip_cfws(lx);
    if (lx->p < lx->end && *lx->p == '@') {
        a->has_adl = true;
        while ((t = next(lx, w, sizeof(w), &sp)) != T_END) {
            if (t == T_SPECIAL && sp == ':')
                break;
            if (t == T_SPECIAL && sp == '>')
                return;
            if (t == T_SPECIAL)
                append(a->adl, sizeof(a->adl), (char[]){ sp, 0 }, false);
            else
                append(a->adl, sizeof(a->adl), w, false);
        }
    }
    while ((t = next(lx, w, sizeof(w), &sp)) != T_END) {
        if (t == T_SPECIAL && sp == '>')
            break;
        if (t == T_SPECIAL && sp == '@') {
            at = true;
            a->has_host = true;
            continue;
        }
        if (t == T_SPECIAL && sp != '.')
            continue;
        const char *piece = t == T_SPECIAL ? "." : w;
        if (at)
            append(a->host, sizeof(a->host), piece, false);
        else
            append(a->mailbox, sizeof(a->mailbox), piece, false);
    }
}

static void
push(struct addr **v, size_t *cap, size_t *k, const struct addr *a)
{
    if (*k == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        *v = xrealloc(*v, *cap * sizeof(**v));
    }
    (*v)[(*k)++] = *a;
}

/* One address list into *vp (to free), max entries at most; returns how
 * many. */
static size_t
parse_list(const char *s, size_t n, struct addr **vp, size_t max)
{
    struct lexer lx = { s, s + n, "" };
    size_t k = 0, cap = 0;
    *vp = NULL;
    bool in_group = false;
    while (k < max) {
        struct addr a;
        memset(&a, 0, sizeof(a));
        char words[WORD_MAX] = "", w[WORD_MAX], sp = 0;
        bool got_angle = false, at = false, any = false;
        lx.comment[0] = '\0';
        enum tok t;
        for (;;) {
            t = next(&lx, w, sizeof(w), &sp);
            if (t == T_END || (t == T_SPECIAL && (sp == ',' || sp == ';' || sp == ':')))
                break;
            any = true;
            if (t == T_SPECIAL && sp == '<') {
                got_angle = true;
                str_copy(a.name, words, sizeof(a.name));
                a.has_name = words[0] != '\0';
                a.mailbox[0] = a.host[0] = '\0';
                a.has_host = false;
                angle(&lx, &a);
                continue;
            }
            if (got_angle)
                continue;
            if (t == T_SPECIAL && sp == '@') {
                at = true;
                a.has_host = true;
                continue;
            }
            if (t == T_SPECIAL && sp == '.') {
                append(at ? a.host : a.mailbox, WORD_MAX, ".", false);
                append(words, sizeof(words), ".", false);
                continue;
            }
            if (t == T_SPECIAL)
                continue;
            if (at) {
                append(a.host, sizeof(a.host), w, false);
            } else {
                /* a phrase word, or part of a local part */
                append(words, sizeof(words), w, true);
                append(a.mailbox, sizeof(a.mailbox), w, false);
            }
        }
        if (t == T_SPECIAL && sp == ':' && !got_angle && !in_group) {
            /* a group: its name, then its members up to ';' */
            struct addr g;
            memset(&g, 0, sizeof(g));
            g.kind = 1;
            str_copy(g.mailbox, words, sizeof(g.mailbox));
            push(vp, &cap, &k, &g);
            in_group = true;
            continue;
        }
        if (any && (got_angle || a.mailbox[0])) {
            if (!a.has_name && lx.comment[0]) {
                str_copy(a.name, lx.comment, sizeof(a.name));
                a.has_name = true;
            }
            push(vp, &cap, &k, &a);
        }
        if (t == T_SPECIAL && sp == ';' && in_group && k < max) {
            struct addr e;
            memset(&e, 0, sizeof(e));
            e.kind = 2;
            push(vp, &cap, &k, &e);
            in_group = false;
        }
        if (t == T_END)
            break;
    }
    if (in_group && k < max) {
        struct addr e;
        memset(&e, 0, sizeof(e));
        e.kind = 2;
        push(vp, &cap, &k, &e);
    }
    return k;
}

static void
put_addr(struct evbuffer *out, const struct addr *a)
{
    if (a->kind == 1) {
        evbuffer_add(out, "(NIL NIL ", 9);
        imap_put_string(out, a->mailbox, strlen(a->mailbox));
        evbuffer_add(out, " NIL)", 5);
        return;
    }
    if (a->kind == 2) {
        evbuffer_add(out, "(NIL NIL NIL NIL)", 17);
        return;
    }
    evbuffer_add(out, "(", 1);
    if (a->has_name)
        imap_put_string(out, a->name, strlen(a->name));
    else
        evbuffer_add(out, "NIL", 3);
    evbuffer_add(out, " ", 1);
    if (a->has_adl)
        imap_put_string(out, a->adl, strlen(a->adl));
    else
        evbuffer_add(out, "NIL", 3);
    evbuffer_add(out, " ", 1);
    imap_put_string(out, a->mailbox, strlen(a->mailbox));
    evbuffer_add(out, " ", 1);
    if (a->has_host)
        imap_put_string(out, a->host, strlen(a->host));
    else
        evbuffer_add(out, "NIL", 3);
    evbuffer_add(out, ")", 1);
}

/* An address-list header as ((...) ...), NIL when it has no address. */
static void
put_addresses(struct evbuffer *out, const char *v, size_t n)
{
    struct addr *a = NULL;
    size_t k = v ? parse_list(v, n, &a, ADDRS_MAX) : 0;
    if (k == 0) {
        evbuffer_add(out, "NIL", 3);
    } else {
        evbuffer_add(out, "(", 1);
        for (size_t i = 0; i < k; i++)
            put_addr(out, &a[i]);
        evbuffer_add(out, ")", 1);
    }
    free(a);
}

/* A header's value as an nstring: unfolded, trimmed. */
static void
put_hstring(struct evbuffer *out, const char *v, size_t n)
{
    if (v == NULL) {
        evbuffer_add(out, "NIL", 3);
        return;
    }
    char buf[8192];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof(buf); i++) {
        if (v[i] == '\r' || v[i] == '\n')
            continue;
        buf[o++] = v[i] == '\t' ? ' ' : v[i];
    }
    size_t s = 0;
    while (s < o && buf[s] == ' ')
        s++;
    while (o > s && buf[o - 1] == ' ')
        o--;
    imap_put_string(out, buf + s, o - s);
}

static bool
blank(const char *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        if (v[i] != ' ' && v[i] != '\t' && v[i] != '\r' && v[i] != '\n')
            return false;
    return true;
}

void
fetch_envelope(struct evbuffer *out, const char *hdr, size_t hlen)
{
    size_t l;
    const char *v;
    evbuffer_add(out, "(", 1);
    static const char *const strs[] = { "Date", "Subject" };
    for (int i = 0; i < 2; i++) {
        v = mime_header(hdr, hlen, strs[i], &l);
        put_hstring(out, v, l);
        evbuffer_add(out, " ", 1);
    }
    size_t froml = 0;
    const char *from = mime_header(hdr, hlen, "From", &froml);
    put_addresses(out, from, froml);
    evbuffer_add(out, " ", 1);
    /* Sender and Reply-To default to From, also when they are empty
     * (RFC 3501 7.4.2) */
    static const char *const defaults[] = { "Sender", "Reply-To" };
    for (int i = 0; i < 2; i++) {
        v = mime_header(hdr, hlen, defaults[i], &l);
        if (v && !blank(v, l))
            put_addresses(out, v, l);
        else
            put_addresses(out, from, froml);
        evbuffer_add(out, " ", 1);
    }
    static const char *const lists[] = { "To", "Cc", "Bcc" };
    for (int i = 0; i < 3; i++) {
        v = mime_header(hdr, hlen, lists[i], &l);
        put_addresses(out, v, l);
        evbuffer_add(out, " ", 1);
    }
    v = mime_header(hdr, hlen, "In-Reply-To", &l);
    put_hstring(out, v, l);
    evbuffer_add(out, " ", 1);
    v = mime_header(hdr, hlen, "Message-ID", &l);
    put_hstring(out, v, l);
    evbuffer_add(out, ")", 1);
}

int
imap_first_address(const char *v, size_t n, char *name, size_t name_size, char *mailbox,
                   size_t mailbox_size, char *host, size_t host_size)
{
    struct addr *a = NULL;
    size_t k = v ? parse_list(v, n, &a, 8) : 0;
    /* a group is its name (RFC 5256: the first address's mailbox; for a
     * group, its start, which names it) */
    int rc = -1;
    for (size_t i = 0; i < k && rc < 0; i++) {
        if (a[i].kind == 2)
            continue;
        str_copy(name, a[i].has_name ? a[i].name : "", name_size);
        str_copy(mailbox, a[i].mailbox, mailbox_size);
        str_copy(host, a[i].has_host ? a[i].host : "", host_size);
        rc = 0;
    }
    free(a);
    return rc;
}

char *
imap_addresses_text(const char *v, size_t n)
{
    struct addr *a = NULL;
    size_t k = parse_list(v, n, &a, ADDRS_MAX);
    size_t cap = 256, len = 0;
    char *out = xmalloc(cap);
    out[0] = '\0';
    for (size_t i = 0; i < k; i++) {
        if (a[i].kind == 2)
            continue;
        char one[3 * WORD_MAX + 16];
        if (a[i].kind == 1)
            snprintf(one, sizeof(one), "%s:", a[i].mailbox);
        else if (a[i].has_name)
            snprintf(one, sizeof(one), "%s <%s%s%s>", a[i].name, a[i].mailbox,
                     a[i].has_host ? "@" : "", a[i].host);
        else
            snprintf(one, sizeof(one), "%s%s%s", a[i].mailbox, a[i].has_host ? "@" : "", a[i].host);
        size_t l = strlen(one);
        if (len + l + 3 > cap) {
            cap = (len + l + 3) * 2;
            out = xrealloc(out, cap);
        }
        if (len) {
            memcpy(out + len, ", ", 2);
            len += 2;
        }
        memcpy(out + len, one, l + 1);
        len += l;
    }
    free(a);
    return out;
}
