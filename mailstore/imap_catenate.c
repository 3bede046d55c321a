/*
 * imap_catenate.c -- CATENATE (RFC 4469): the message an APPEND builds
 * from TEXT literals and URL parts, messages or sections of messages in
 * the user's own folders named by IMAP URLs (RFC 5092: "/INBOX;
 * UIDVALIDITY=n/;UID=n/;SECTION=1.2/;PARTIAL=0.100", or imap://user@host/
 * with the logged-in user's name and this server's host: its hostname
 * or the address the client reached, any port). A URL with another
 * user's name, no user, another host, URLAUTH, or naming no message is
 * NO [BADURL]; the message built
 * is bounded like an APPENDed one.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "mime_struct.h"

#define URL_MAX 2048            /* one URL's length */
#define PARTS_MAX 256           /* TEXT and URL parts of one message */

static int
syntax(const struct imap_arg *list)
{
    if (list->type != IA_LIST || list->nlist == 0 || list->nlist % 2 || list->nlist > PARTS_MAX * 2)
        return -1;
    for (size_t i = 0; i < list->nlist; i += 2) {
        const struct imap_arg *k = &list->list[i], *v = &list->list[i + 1];
        if (imap_arg_is(k, "TEXT")) {
            if (v->type != IA_STRING || !v->literal)
                return -1;      /* text-literal = "TEXT" SP literal */
        } else if (imap_arg_is(k, "URL")) {
            if ((v->type != IA_STRING && v->type != IA_ATOM) || v->len == 0 || v->len > URL_MAX ||
                memchr(v->s, '\0', v->len))
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

int
imap_catenate_check(const struct imap_arg *list, const char **why)
{
    if (syntax(list) < 0) {
        *why = "CATENATE (TEXT literal / URL url ...)";
        return -1;
    }
    return 0;
}

/* %XX decoded from s[0..n) into out (NUL-terminated); -1: too long, a
 * bad escape, or a control character. */
static int
pct_decode(const char *s, size_t n, char *out, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return -1;
            char hex[3] = { s[i + 1], s[i + 2], '\0' };
            ch = (unsigned char)strtoul(hex, NULL, 16);
            i += 2;
        }
        if (ch < ' ' || ch == 0x7f || o + 1 >= size)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/* A decimal number in s[0..n), 1 .. max; -1 for anything else. */
static int
number(const char *s, size_t n, uint64_t max, uint64_t *v)
{
    if (n == 0 || n > 20)
        return -1;
    uint64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]) || r > (UINT64_MAX - 9) / 10)
            return -1;
        r = r * 10 + (uint64_t)(s[i] - '0');
    }
    if (r > max)
        return -1;
    *v = r;
    return 0;
}

static bool
key_is(const char *p, const char *end, const char *key)
{
    size_t k = strlen(key);
    return (size_t)(end - p) >= k && strncasecmp(p, key, k) == 0;
}

/* RFC 3339 date-time ("2026-12-05T20:00:00Z", "...+01:00", fractions of
 * a second ignored) as a time; -1 for anything else. */
static int
expire_parse(const char *s, size_t n, time_t *t)
{
    char buf[64];
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    for (size_t i = 0; i < 19; i++) {
        char want = "dddd-dd-ddTdd:dd:dd"[i];
        if (i >= n || (want == 'd' ? !isdigit((unsigned char)buf[i])
                                   : toupper((unsigned char)buf[i]) != want))
            return -1;
    }
    int y, mo, d, h, mi, se, used = 0;
    if (sscanf(buf, "%4d-%2d-%2d%*1[Tt]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &se, &used) != 6 ||
        used != 19 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60 ||
        y < 1970 || mo < 0 || h < 0 || mi < 0 || se < 0)
        return -1;
    const char *p = buf + used;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om, ou = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &ou) != 2 || ou != 5 || oh < 0 || oh > 23 ||
            om < 0 || om > 59)
            return -1;
        off = (oh * 60L + om) * 60L * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                     .tm_min = mi, .tm_sec = se };
    *t = timegm(&tm) - off;
    return 0;
}

/* An access identifier (RFC 4467): "anonymous", "authuser", "submit+"
 * user or "user+" user (%-decoded). */
static int
access_parse(const char *p, size_t n, struct imap_url *u)
{
    static const struct { const char *name; enum imap_url_access a; } kinds[] = {
        { "submit+", URL_ACCESS_SUBMIT }, { "user+", URL_ACCESS_USER },
        { "authuser", URL_ACCESS_AUTHUSER }, { "anonymous", URL_ACCESS_ANONYMOUS },
    };
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        size_t k = strlen(kinds[i].name);
        if (n < k || strncasecmp(p, kinds[i].name, k) != 0)
            continue;
        u->access = kinds[i].a;
        if (kinds[i].name[k - 1] != '+')
            return n == k ? 0 : -1;
        return pct_decode(p + k, n - k, u->access_user, sizeof(u->access_user)) < 0 ||
               u->access_user[0] == '\0' ? -1 : 0;
    }
    return -1;
}

int
imap_url_parse(const char *s, struct imap_url *u)
{
    memset(u, 0, sizeof(*u));
    const char *end = s + strlen(s), *p = s;
    if (key_is(p, end, "imap://") || key_is(p, end, "//")) {
        /* iserver: [enc-user [";AUTH=" ...] "@"] host [":" port] */
        p += key_is(p, end, "imap://") ? 7 : 2;
        u->absolute = true;
        const char *slash = memchr(p, '/', (size_t)(end - p));
        if (slash == NULL)
            return -1;
        const char *at = memchr(p, '@', (size_t)(slash - p));
        if (at) {
            const char *ue = p;
            while (ue < at && *ue != ';')
                ue++;
            if (pct_decode(p, (size_t)(ue - p), u->user, sizeof(u->user)) < 0 || u->user[0] == '\0')
                return -1;
            u->has_user = true;
        }
        /* host [":" port]: a name, an IPv4 address or [IPv6] */
        const char *h = at ? at + 1 : p, *he;
        if (h < slash && *h == '[') {
            h++;
            he = memchr(h, ']', (size_t)(slash - h));
            if (he == NULL)
                return -1;
        } else {
            he = h;
            while (he < slash && *he != ':')
                he++;
        }
        if (he == h || (size_t)(he - h) >= sizeof(u->host))
            return -1;
        for (size_t i = 0; i < (size_t)(he - h); i++) {
            unsigned char ch = (unsigned char)h[i];
            if (!isalnum(ch) && !strchr("-._:%", ch))
                return -1;
            u->host[i] = (char)tolower(ch);
        }
        const char *port = he < slash && *he == ']' ? he + 1 : he;
        if (port < slash) {
            uint64_t pn;
            if (*port != ':' || number(port + 1, (size_t)(slash - port - 1), 65535, &pn) < 0)
                return -1;
        }
        p = slash;
    }
    if (*p != '/')
        return -1;
    p++;
    /* the mailbox, up to "/;UID=", with its ";UIDVALIDITY=" */
    const char *mend = p;
    while (mend < end && !key_is(mend, end, "/;UID="))
        mend++;
    if (mend == end)
        return -1;          /* a URL of a mailbox or a search, not of a message */
    const char *v = p;
    while (v < mend && !key_is(v, mend, ";UIDVALIDITY="))
        v++;
    if (v == p || pct_decode(p, (size_t)(v - p), u->mailbox, sizeof(u->mailbox)) < 0)
        return -1;
    uint64_t n;
    if (v < mend) {
        v += 13;
        if (number(v, (size_t)(mend - v), UINT32_MAX, &n) < 0 || n == 0)
            return -1;
        u->uidvalidity = (uint32_t)n;
    }
    p = mend + 6;
    const char *e = p;
    while (e < end && *e != '/' && *e != ';')
        e++;
    if (number(p, (size_t)(e - p), UINT32_MAX, &n) < 0 || n == 0)
        return -1;
    u->uid = (uint32_t)n;
    p = e;
    if (key_is(p, end, "/;SECTION=")) {
        p += 10;
        e = p;
        while (e < end && *e != '/' && *e != ';')
            e++;
        if (e == p || pct_decode(p, (size_t)(e - p), u->section, sizeof(u->section)) < 0)
            return -1;
        for (char *q = u->section; *q; q++)
            *q = (char)toupper((unsigned char)*q);
        p = e;
    }
    if (key_is(p, end, "/;PARTIAL=")) {
        p += 10;
        e = p;
        while (e < end && *e != '.' && *e != '/' && *e != ';')
            e++;
        if (number(p, (size_t)(e - p), UINT32_MAX, &u->p_off) < 0)
            return -1;
        u->p_len = UINT64_MAX;
        if (e < end && *e == '.') {
            p = ++e;
            while (e < end && *e != '/' && *e != ';')
                e++;
            if (number(p, (size_t)(e - p), UINT32_MAX, &u->p_len) < 0 || u->p_len == 0)
                return -1;
        }
        u->partial = true;
        p = e;
    }
    /* RFC 4467: [";EXPIRE=" date-time] ";URLAUTH=" access [":" mech ":" token] */
    if (key_is(p, end, ";EXPIRE=")) {
        p += 8;
        e = p;
        while (e < end && *e != ';')
            e++;
        if (expire_parse(p, (size_t)(e - p), &u->expire) < 0 || !key_is(e, end, ";URLAUTH="))
            return -1;
        u->has_expire = true;
        p = e;
    }
    if (key_is(p, end, ";URLAUTH=")) {
        p += 9;
        e = p;
        while (e < end && *e != ':')
            e++;
        if (access_parse(p, (size_t)(e - p), u) < 0)
            return -1;
        u->has_urlauth = true;
        u->rump_len = (size_t)(e - s);
        p = e;
        if (p < end) {
            /* ":" mechanism ":" token: an atom of letters, digits, '-' and '.'; hex */
            const char *m = ++p;
            while (p < end && (isalnum((unsigned char)*p) || *p == '-' || *p == '.'))
                p++;
            if (p == m || (size_t)(p - m) >= sizeof(u->mech) || p == end || *p != ':')
                return -1;
            memcpy(u->mech, m, (size_t)(p - m));
            const char *t = ++p;
            while (p < end && isxdigit((unsigned char)*p))
                p++;
            if ((size_t)(p - t) < 32 || (size_t)(p - t) >= sizeof(u->token))
                return -1;
            memcpy(u->token, t, (size_t)(p - t));
        }
    }
    return p == end ? 0 : -1;
}

bool
imap_catenate_url_ok(const char *url)
{
    struct imap_url u;
    return imap_url_parse(url, &u) == 0;
}

/* Does an absolute URL's host name this server: its hostname, or the
 * address the client reached it at? */
bool
imap_url_host_ours(struct store_conn *c, const char *host)
{
    if (str_ieq(host, c->srv->cfg->hostname))
        return true;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return false;
    char ip[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
    } else if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a6 = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6))
            inet_ntop(AF_INET, &a6->s6_addr[12], ip, sizeof(ip));
        else
            inet_ntop(AF_INET6, a6, ip, sizeof(ip));
    } else {
        return false;
    }
    return str_ieq(host, ip);
}

int
imap_url_map(const char *dir, const struct imap_url *u, char **msg_r, size_t *len_r,
             const char **why)
{
    struct folder *v = folder_open(dir, true);
    if (v == NULL) {
        *why = "The folder cannot be read";
        return -1;
    }
    int rc = -1;
    *why = "No such message";
    size_t lo = 0, hi = v->n;
    while (lo < hi) {               /* the view's UIDs are in order */
        size_t mid = lo + (hi - lo) / 2;
        if (v->uids[mid] < u->uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    struct folder_msg m;
    char path[2100];
    int fd = -1;
    struct stat st;
    if (u->uidvalidity && u->uidvalidity != v->validity) {
        *why = "UIDVALIDITY differs";
    } else if (lo < v->n && v->uids[lo] == u->uid && folder_msg(v, lo, &m) == 0 && !m.expunged &&
               folder_path(v, &m, path, sizeof(path)) >= 0 &&
               (fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0 && fstat(fd, &st) == 0) {
        size_t len = (size_t)st.st_size;
        char *msg = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : (char *)"";
        if (msg == MAP_FAILED) {
            *why = "The message cannot be read";
        } else {
            *msg_r = msg;
            *len_r = len;
            rc = 0;
        }
    }
    if (fd >= 0)
        close(fd);
    folder_close(&v);
    return rc;
}

int
imap_url_range(const char *msg, size_t len, const struct imap_url *u, struct evbuffer *b,
               const char **p_r, size_t *n_r, const char **why)
{
    const char *p = msg;
    size_t n = len;
    if (u->section[0]) {
        struct mime_tree *t = mime_parse_struct(msg, len);
        int sr = fetch_section_range(msg, len, t, u->section, &p, &n, b);
        if (sr == 1) {
            n = evbuffer_get_length(b);
            p = (const char *)evbuffer_pullup(b, -1);
        }
        mime_tree_free(&t);
        if (sr < 0) {
            *why = "No such section";
            return -1;
        }
    }
    if (u->partial) {
        size_t off = u->p_off > n ? n : (size_t)u->p_off;
        p += off;
        n -= off;
        if (n > u->p_len)
            n = (size_t)u->p_len;
    }
    *p_r = p;
    *n_r = n;
    return 0;
}

/* The bytes of u (of one of the user's own folders) added to out, at
 * most max in out: 0, -1 BADURL (why), -2 too big. */
static int
url_add(struct imap_ctx *x, const struct imap_url *u, struct evbuffer *out, size_t max, const char **why)
{
    struct store_conn *c = x->c;
    char dir[1500];
    if (u->absolute && (!u->has_user || c->user == NULL || !str_ieq(u->user, c->user))) {
        *why = "Only the user's own messages";
        return -1;
    }
    if (u->absolute && !imap_url_host_ours(c, u->host)) {
        *why = "Only messages on this server";
        return -1;
    }
    if (imap_folder_dir(c, x->im, u->mailbox, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir)) {
        *why = "No such folder";
        return -1;
    }
    char *msg;
    size_t len;
    if (imap_url_map(dir, u, &msg, &len, why) < 0)
        return -1;
    struct evbuffer *b = evbuffer_new();
    const char *p;
    size_t n;
    int rc = -1;
    if (imap_url_range(msg, len, u, b, &p, &n, why) == 0) {
        if (n > max - evbuffer_get_length(out)) {
            rc = -2;
        } else {
            evbuffer_add(out, p, n);
            rc = 0;
        }
    }
    evbuffer_free(b);
    if (len)
        munmap(msg, len);
    return rc;
}

/* The URL as a BADURL code may carry it: printable, no ']'. */
static void
badurl(struct imap_ctx *x, const char *url, const char *why)
{
    char safe[256];
    size_t o = 0;
    for (const char *p = url; *p && o + 1 < sizeof(safe); p++)
        safe[o++] = (*p > ' ' && *p < 0x7f && *p != ']') ? *p : '_';
    safe[o] = '\0';
    imap_tagged(x, "NO", "[BADURL %s] %s", safe, why);
}

int
imap_catenate(struct imap_ctx *x, const struct imap_arg *list, size_t max, struct evbuffer *out,
              bool *binary_r)
{
    *binary_r = false;
    for (size_t i = 0; i + 1 < list->nlist; i += 2) {
        const struct imap_arg *val = &list->list[i + 1];
        if (imap_arg_is(&list->list[i], "TEXT")) {
            if (val->len > max - evbuffer_get_length(out)) {
                imap_tagged(x, "NO", "[TOOBIG] The message would be too big");
                return -1;
            }
            evbuffer_add(out, val->s, val->len);
            *binary_r |= val->binary;
            continue;
        }
        char *s = imap_arg_str(val);
        struct imap_url u;
        const char *why = "Not an IMAP URL of a message";
        int rc = imap_url_parse(s, &u) < 0 ? -1 : u.has_urlauth ? -1 : url_add(x, &u, out, max, &why);
        if (rc == -1 && u.has_urlauth)
            why = "URLAUTH URLs are for URLFETCH";
        if (rc == -1)
            badurl(x, s, why);
        else if (rc == -2)
            imap_tagged(x, "NO", "[TOOBIG] The message would be too big");
        free(s);
        if (rc < 0)
            return -1;
    }
    return 0;
}
