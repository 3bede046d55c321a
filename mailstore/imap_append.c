/*
 * imap_append.c -- APPEND (RFC 3501 6.3.11) with MULTIAPPEND (RFC 3502:
 * several messages, all or none), APPENDUID (UIDPLUS, RFC 4315) and
 * binary data (a literal8, RFC 3516: stored as base64), and messages
 * built by CATENATE (RFC 4469, imap_catenate.c), into any folder, counted
 * against the account's quota before it is written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <event2/buffer.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "mime_struct.h"

#define APPEND_MAX 1000             /* messages in one MULTIAPPEND */

/* "dd-Mon-yyyy hh:mm:ss +zzzz" */
static time_t
parse_datetime(const char *s)
{
    int d, y, H, M, S, z;
    char mon[4];
    if (sscanf(s, "%d-%3s-%d %d:%d:%d %d", &d, mon, &y, &H, &M, &S, &z) != 7 || d < 1 || d > 31 ||
        H > 23 || M > 59 || S > 60 || y < 1900)
        return -1;
    static const char *const months[] = { "jan", "feb", "mar", "apr", "may", "jun", "jul",
                                          "aug", "sep", "oct", "nov", "dec" };
    for (int m = 0; m < 12; m++)
        if (strcasecmp(mon, months[m]) == 0) {
            struct tm tm = { .tm_sec = S, .tm_min = M, .tm_hour = H, .tm_mday = d, .tm_mon = m,
                             .tm_year = y - 1900 };
            int sign = z < 0 ? -1 : 1, az = z * sign;
            return timegm(&tm) - sign * ((az / 100) * 3600 + (az % 100) * 60);
        }
    return -1;
}

/* A message APPENDed as binary (literal8, RFC 3516 4.4): its parts in the
 * binary encoding, or with NUL bytes, stored as base64 (their header says
 * so), so that BODY[] stays 7-bit safe and BINARY[] gives the bytes back.
 * NULL: nothing to change. */
static char *
binary_to_base64(const char *msg, size_t len, size_t *out_len)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    struct mime_tree *t = mime_parse_struct(msg, len);
    struct evbuffer *out = evbuffer_new();
    size_t done = 0;
    bool changed = false;
    for (size_t i = 0; i < t->n; i++) {
        const struct mime_part *mp = &t->parts[i];
        if (strcmp(mp->type, "multipart") == 0 || mp->nchildren > 0 || mp->off < done)
            continue;
        bool binary = strcmp(mp->encoding, "BINARY") == 0 ||
                      memchr(msg + mp->body_off, '\0', mp->body_len) != NULL;
        size_t hend = mp->off + mp->header_len;     /* the header with its empty line */
        if (!binary || mp->header_len == 0 || hend != mp->body_off)
            continue;
        /* the header, its Content-Transfer-Encoding fields out */
        size_t blank = hend - (hend >= 2 && msg[hend - 2] == '\r' ? 2 : 1);
        evbuffer_add(out, msg + done, mp->off - done);
        struct rfc5322_field f;
        const char *at = msg + mp->off, *next;
        while ((next = rfc5322_next(at, msg + blank, &f)) != NULL) {
            if (!rfc5322_is(&f, "Content-Transfer-Encoding"))
                evbuffer_add(out, at, (size_t)(next - at));
            at = next;
        }
        evbuffer_add_printf(out, "Content-Transfer-Encoding: base64\r\n\r\n");
        const unsigned char *b = (const unsigned char *)msg + mp->body_off;
        size_t n = mp->body_len, col = 0;
        for (size_t k = 0; k < n; k += 3) {
            unsigned v = (unsigned)b[k] << 16 | (k + 1 < n ? (unsigned)b[k + 1] << 8 : 0) |
                         (k + 2 < n ? b[k + 2] : 0);
            char q[4] = { b64[v >> 18 & 63], b64[v >> 12 & 63],
                          k + 1 < n ? b64[v >> 6 & 63] : '=', k + 2 < n ? b64[v & 63] : '=' };
            evbuffer_add(out, q, 4);
            if ((col += 4) >= 76 && k + 3 < n) {
                evbuffer_add(out, "\r\n", 2);
                col = 0;
            }
        }
        if (n)
            evbuffer_add(out, "\r\n", 2);
        done = mp->body_off + mp->body_len;
        changed = true;
    }
    mime_tree_free(&t);
    if (!changed) {
        evbuffer_free(out);
        return NULL;
    }
    evbuffer_add(out, msg + done, len - done);
    *out_len = evbuffer_get_length(out);
    char *r = xmalloc(*out_len + 1);
    evbuffer_remove(out, r, *out_len);
    evbuffer_free(out);
    return r;
}

void
cmd_append(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    struct imap_cmd *cmd = x->cmd;
    char *name = cmd->nargs >= 2 ? imap_folder_arg(x, &cmd->args[0]) : NULL;
    char dir[1500];
    if (name == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "APPEND folder [(flags)] [date-time] literal");
        return;
    }
    /* the messages: [flags] [date] literal or CATENATE (...), one or
     * more (MULTIAPPEND) */
    struct one {
        unsigned flags; const char **kws; size_t nkws; time_t date;
        const struct imap_arg *msg, *cat;
        const char *data; size_t len; bool binary;
        struct evbuffer *built;         /* CATENATE's */
    };
    struct one *v = NULL;
    size_t n = 0;
    uint64_t total = 0;
    const char *why = NULL;
    for (size_t i = 1; i < cmd->nargs && why == NULL;) {
        struct one o = { 0 };
        if (cmd->args[i].type == IA_LIST) {
            uint32_t kw;
            if (imap_parse_flags(&cmd->args[i], NULL, false, &o.flags, &kw, &o.kws, &o.nkws, &why) < 0)
                break;
            i++;
        }
        if (i + 1 < cmd->nargs && cmd->args[i].type == IA_STRING && !cmd->args[i].literal) {
            char *ds = imap_arg_str(&cmd->args[i]);
            o.date = parse_datetime(ds);
            free(ds);
            if (o.date < 0) {
                why = "Bad date-time";
                free(o.kws);
                break;
            }
            i++;
        }
        if (i + 1 < cmd->nargs && imap_arg_is(&cmd->args[i], "CATENATE") && n < APPEND_MAX) {
            if (imap_catenate_check(&cmd->args[i + 1], &why) < 0) {
                free(o.kws);
                break;
            }
            o.cat = &cmd->args[i + 1];
            i += 2;
        } else if (i + 1 < cmd->nargs && imap_arg_is(&cmd->args[i], "UTF8") && n < APPEND_MAX) {
            /* RFC 6855 4: UTF8 (literal8), a message with UTF-8 in its
             * header, stored as it is; only once the client said it
             * knows UTF8=ACCEPT */
            const struct imap_arg *l = &cmd->args[i + 1];
            if (!x->im->utf8 || l->type != IA_LIST || l->nlist != 1 ||
                l->list[0].type != IA_STRING || !l->list[0].literal) {
                why = x->im->utf8 ? "APPEND folder [(flags)] [date-time] UTF8 (literal8)"
                                  : "APPEND's UTF8 data needs ENABLE UTF8=ACCEPT";
                free(o.kws);
                break;
            }
            o.msg = &l->list[0];
            o.data = o.msg->s;
            o.len = o.msg->len;
            o.binary = o.msg->binary;
            total += o.msg->len;
            i += 2;
        } else if (i >= cmd->nargs || cmd->args[i].type != IA_STRING || n >= APPEND_MAX) {
            why = "APPEND folder [(flags)] [date-time] literal";
            free(o.kws);
            break;
        } else {
            o.msg = &cmd->args[i++];
            o.data = o.msg->s;
            o.len = o.msg->len;
            o.binary = o.msg->binary;
            total += o.msg->len;
        }
        v = xrealloc(v, (n + 1) * sizeof(*v));
        v[n++] = o;
    }
    bool ok = false;
    if (why || n == 0) {
        imap_tagged(x, "BAD", "%s", why ? why : "APPEND folder [(flags)] [date-time] literal");
    } else if (imap_folder_dir(c, x->im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir)) {
        imap_tagged(x, "NO", "[TRYCREATE] No such folder");
    } else {
        /* CATENATE's messages built: each at most a message's size, all
         * of them at most what one APPEND command may carry */
        ok = true;
        uint64_t msgmax = c->srv->cfg->limits.message_size, budget = x->im->rd.max_total;
        for (size_t k = 0; k < n && ok; k++) {
            if (v[k].cat == NULL)
                continue;
            uint64_t room = total < budget ? budget - total : 0;
            v[k].built = evbuffer_new();
            ok = imap_catenate(x, v[k].cat, (size_t)(room < msgmax ? room : msgmax), v[k].built,
                               &v[k].binary) == 0;
            v[k].len = evbuffer_get_length(v[k].built);
            v[k].data = (const char *)evbuffer_pullup(v[k].built, -1);
            if (v[k].data == NULL)
                v[k].data = "";
            total += v[k].len;
        }
    }
    if (ok) {
        /* the account's quota applies to what a client puts there too, in
         * every folder */
        enum md_status rs = mailstore_reserve(c->mailbox, imap_account_quota(c), total, (int64_t)n);
        if (rs != MD_OK) {
            if (rs == MD_OVER_QUOTA)
                imap_tagged(x, "NO", "[OVERQUOTA] The mailbox is full");
            else
                imap_tagged(x, "NO", "[SERVERBUG] APPEND failed");
        } else {
            struct folder_add *add = folder_add_begin(dir);
            uint32_t *uids = xcalloc(n, sizeof(uint32_t)), validity = 0;
            int rc = add ? 0 : -1;
            for (size_t k = 0; k < n && rc == 0; k++) {
                size_t blen = 0;
                char *conv = v[k].binary ? binary_to_base64(v[k].data, v[k].len, &blen) : NULL;
                rc = folder_add_data(add, conv ? conv : v[k].data, conv ? blen : v[k].len,
                                     v[k].flags, v[k].kws, v[k].nkws, v[k].date);
                if (conv && rc == 0) {
                    /* base64 is longer: the quota counts what is stored */
                    mailstore_usage_add(c->mailbox, (int64_t)blen - (int64_t)v[k].len, 0);
                    total += blen - v[k].len;
                }
                free(conv);
            }
            if (rc == 0)
                rc = folder_add_commit(add, uids, &validity);
            int err = errno;
            folder_add_end(&add);
            if (rc < 0) {
                mailstore_usage_add(c->mailbox, -(int64_t)total, -(int64_t)n);
                if (err == ENOSPC)
                    imap_tagged(x, "NO", "[LIMIT] Too many keywords in the folder");
                else
                    imap_tagged(x, "NO", "[SERVERBUG] APPEND failed: %s", strerror(err));
            } else {
                struct evbuffer *b = evbuffer_new();
                imap_put_set(b, uids, n);
                imap_tagged(x, "OK", "[APPENDUID %lu %.*s] APPEND completed",
                            (unsigned long)validity, (int)evbuffer_get_length(b),
                            (const char *)evbuffer_pullup(b, -1));
                evbuffer_free(b);
            }
            free(uids);
        }
    }
    for (size_t k = 0; k < n; k++) {
        free(v[k].kws);
        if (v[k].built)
            evbuffer_free(v[k].built);
    }
    free(v);
    free(name);
}
