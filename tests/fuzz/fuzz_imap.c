/* Fuzz target: the IMAP command reader and parser (mailstore/imap_parse.c)
 * and what reads the parsed arguments: sequence sets (sorted, merged, each
 * number in the set once), FETCH items (BINARY and MODSEQ too, never the
 * same one twice), SEARCH keys (MODSEQ, KEYWORD), literal8, CATENATE's
 * lists and the IMAP URLs in them with their hosts (imap_catenate.c),
 * RETURN options with PARTIAL ranges, UPDATE and CONTEXT, and the message
 * numbers of SEARCH keys pinned to UIDs for a search kept up to date
 * (RFC 5267), NOTIFY's filters and events (imap_notify.c: every
 * filter known, names only for SUBTREE and MAILBOXES, FETCH attributes
 * only for the selected folder, one SELECTED at most), and URLAUTH's
 * parts of a URL (RFC 4467: ";EXPIRE=", ";URLAUTH=" access ":" mechanism
 * ":" token, the rump the token signs), folder names between modified
 * UTF-7 and UTF-8 (UTF8=ACCEPT, imap_utf7.c) and 8-bit quoted strings
 * marked for the session to refuse before ENABLE. The input is
 * fed in two pieces, so a command split anywhere reads like a whole one.
 * An input that starts with 0xff is a needle and the bytes to search
 * instead: SEARCH's case-insensitive byte search (imap_search.c) against a
 * naive one; 0xfe, a header block for ENVELOPE and the address lists SEARCH
 * and SORT read (imap_envelope.c); 0xfd, a subject for RFC 5256's base
 * subject (imap_sort.c), which must be a tail of it; 0xfc, a section
 * ("1.2", up to a newline) and a message for URLFETCH's BINARY and
 * BODYPARTSTRUCTURE with every leaf decoded (imap_urlauth.c). */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../mailstore/imap_private.h"
#include "../../mailstore/imap_fetch.h"
#include "../../mailstore/imap_search.h"
#include <event2/buffer.h>

/* A folder name both ways (imap_utf7.c): UTF-8 encodes when it is valid
 * and decodes back to itself; modified UTF-7 that decodes is the form its
 * decoded name encodes to; a quoted string of either survives output. */
static void
utf7_names(const char *s)
{
    char a[FOLDER_NAME_LEN * 4], b[FOLDER_NAME_LEN * 4];
    size_t l = strlen(s);
    bool valid = imap_utf8_valid(s, l);
    if (imap_utf7_encode(s, a, sizeof(a)) == 0) {
        if (!valid)
            __builtin_trap();
        for (const char *p = a; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                __builtin_trap();
        if (imap_utf7_decode(a, b, sizeof(b)) < 0 || strcmp(b, s) != 0)
            __builtin_trap();
    } else if (valid && l < sizeof(a) / 5) {
        __builtin_trap();       /* room enough: a valid name always encodes */
    }
    if (imap_utf7_decode(s, a, sizeof(a)) == 0) {
        if (!imap_utf8_valid(a, strlen(a)) || imap_utf7_encode(a, b, sizeof(b)) < 0 ||
            strcmp(b, s) != 0)
            __builtin_trap();
    }
    struct evbuffer *out = evbuffer_new();
    imap_put_ustring(out, s, l, true);
    imap_put_ustring(out, s, l, false);
    evbuffer_free(out);
}

static void
walk(const struct imap_arg *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].type == IA_LIST) {
            const char *why = NULL;
            if (imap_catenate_check(&v[i], &why) < 0 && why == NULL)
                __builtin_trap();
            /* RETURN options: a PARTIAL range is first:last of one sign,
             * |first| <= |last|, and names a window inside the results */
            unsigned ret;
            struct imap_partial p;
            if (imap_parse_return(&v[i], &ret, &p) == 0 && (ret & IMAP_RET_PARTIAL)) {
                if (p.first == 0 || p.last == 0 || (p.first > 0) != (p.last > 0) ||
                    (p.first > 0 ? p.first > p.last : p.first < p.last) || (ret & IMAP_RET_ALL))
                    __builtin_trap();
                for (size_t k = 0; k < 8; k++) {
                    size_t from, to;
                    imap_partial_window(&p, k, &from, &to);
                    if (from > to || to > k)
                        __builtin_trap();
                }
            }
            walk(v[i].list, v[i].nlist);
            continue;
        }
        char *s = imap_arg_str(&v[i]);
        if (s)
            imap_catenate_url_ok(s);
        if (s)
            utf7_names(s);
        struct imap_url u;
        if (s && imap_url_parse(s, &u) == 0 && u.has_urlauth) {
            /* the rump ends at the access identifier; a token only with
             * its mechanism, hex, 32 digits at least */
            size_t sl = strlen(s), tl = strlen(u.token);
            if (u.rump_len > sl || (s[u.rump_len] != '\0' && s[u.rump_len] != ':') ||
                (u.mech[0] == '\0') != (tl == 0) || (tl && tl < 32) ||
                u.access == URL_ACCESS_NONE ||
                ((u.access == URL_ACCESS_USER || u.access == URL_ACCESS_SUBMIT) &&
                 u.access_user[0] == '\0'))
                __builtin_trap();
            for (size_t k = 0; k < tl; k++)
                if (!isxdigit((unsigned char)u.token[k]))
                    __builtin_trap();
        }
        free(s);
        struct seqset set;
        if (v[i].type == IA_ATOM && seqset_parse(v[i].s, v[i].len, 1000, &set) == 0) {
            /* sorted, apart, each range in order */
            for (size_t k = 0; k < set.n; k++)
                if (set.r[k].lo > set.r[k].hi || (k && set.r[k].lo <= set.r[k - 1].hi + 1))
                    __builtin_trap();
            if (set.n && (!seqset_has(&set, set.r[0].lo) || !seqset_has(&set, set.r[set.n - 1].hi)))
                __builtin_trap();
            seqset_free(&set);
        }
    }
}

static void
notify(const struct imap_cmd *cmd)
{
    struct imap_notify_req r;
    const char *why = NULL;
    int rc = imap_notify_parse(cmd->args, cmd->nargs, &r, &why);
    if (rc != 0) {
        if ((rc != -1 && rc != -2) || why == NULL)
            __builtin_trap();
        return;
    }
    if (r.none != (r.nf == 0) || r.nf > IMAP_NOTIFY_FILTERS_MAX)
        __builtin_trap();
    size_t selected = 0;
    for (size_t i = 0; i < r.nf; i++) {
        const struct imap_notify_filter *f = &r.f[i];
        bool named = f->kind == IMAP_NF_SUBTREE || f->kind == IMAP_NF_MAILBOXES;
        bool sel = f->kind == IMAP_NF_SELECTED || f->kind == IMAP_NF_SELECTED_DELAYED;
        if (f->kind > IMAP_NF_MAILBOXES || named != (f->names != NULL) ||
            (named && (f->nnames == 0 || f->nnames > 64)) || (f->fetch && !sel) ||
            (f->events & ~(unsigned)(IMAP_NE_NEW | IMAP_NE_EXPUNGE | IMAP_NE_FLAGS |
                                     IMAP_NE_NAME | IMAP_NE_SUBSCRIPTION)))
            __builtin_trap();
        for (size_t k = 0; k < f->nnames; k++)
            if (f->names[k].type != IA_ATOM && f->names[k].type != IA_STRING)
                __builtin_trap();
        selected += sel;
        if (f->fetch) {
            struct fetch_spec fs;
            fetch_parse(f->fetch, &fs, &why);
        }
    }
    if (selected > 1)
        __builtin_trap();
}

static void
one(const char *buf, size_t len)
{
    struct imap_cmd cmd;
    const char *why;
    if (imap_parse(buf, len, &cmd, &why) < 0)
        return;
    if (cmd.quoted_not_utf8 && !cmd.quoted8)
        __builtin_trap();
    walk(cmd.args, cmd.nargs);
    notify(&cmd);
    if (cmd.nargs > 0) {
        struct fetch_spec fs;
        if (fetch_parse(&cmd.args[cmd.nargs - 1], &fs, &why) == 0) {
            if (fs.n == 0 || fs.n > FETCH_MAX_ITEMS)
                __builtin_trap();
            for (size_t i = 0; i < fs.n; i++)
                for (size_t k = 0; k < i; k++) {
                    const struct fetch_item *a = &fs.v[i], *b = &fs.v[k];
                    if (a->kind == b->kind &&
                        (a->kind != FI_SECTION ||
                         (strcmp(a->section, b->section) == 0 && a->partial == b->partial &&
                          (!a->partial || a->p_off == b->p_off))))
                        __builtin_trap();
                }
        }
        struct search *s;
        bool badcs;
        if (search_parse(cmd.args, cmd.nargs, NULL, 100, 1000, &s, &why, &badcs) == 0) {
            /* a view of 100 messages, UIDs 1, 3, 5, ... */
            static uint32_t uids[100];
            for (size_t i = 0; i < 100; i++)
                uids[i] = (uint32_t)(2 * i + 1);
            struct folder view = { .uids = uids, .n = 100 };
            search_pin_seqs(s, &view);
            search_free(s);
        }
    }
    imap_cmd_free(&cmd);
}

/* data[0] % 65: the needle's length; the rest: the bytes searched. */
static void
bytes_search(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    size_t nl = data[0] % 65;
    if (nl > size - 1)
        nl = size - 1;
    char needle[65];
    for (size_t i = 0; i < nl; i++)
        needle[i] = (char)tolower(data[1 + i]);
    const char *h = (const char *)data + 1 + nl;
    size_t hl = size - 1 - nl;
    size_t fail[65];
    search_bytes_prepare(needle, nl, fail);
    bool want = nl == 0;
    for (size_t i = 0; !want && i + nl <= hl; i++) {
        size_t k = 0;
        while (k < nl && tolower((unsigned char)h[i + k]) == (unsigned char)needle[k])
            k++;
        want = k == nl;
    }
    if (search_bytes(h, hl, needle, nl, fail) != want)
        __builtin_trap();
}

static void
addresses(const uint8_t *data, size_t size)
{
    struct evbuffer *out = evbuffer_new();
    fetch_envelope(out, (const char *)data, size);
    evbuffer_free(out);
    char *t = imap_addresses_text((const char *)data, size);
    free(t);
    char name[64], mbox[64], host[64];
    if (imap_first_address((const char *)data, size, name, sizeof(name), mbox, sizeof(mbox), host,
                           sizeof(host)) == 0 &&
        (strlen(name) >= sizeof(name) || strlen(mbox) >= sizeof(mbox)))
        __builtin_trap();
}

static void
base_subject(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    bool reply;
    const char *b = imap_base_subject(s, &reply);
    if (b < s || b > s + strlen(s) || (b[0] == ' '))
        __builtin_trap();
    free(s);
}

/* A section up to a newline, then a message: URLFETCH's data of it. */
static void
urlfetch_data(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t sl = nl ? (size_t)(nl - data) : 0;
    struct imap_url u;
    memset(&u, 0, sizeof(u));
    if (sl >= sizeof(u.section))
        return;
    memcpy(u.section, data, sl);
    if (memchr(u.section, '\0', sl))
        return;
    const char *msg = (const char *)data + (nl ? sl + 1 : 0);
    size_t len = size - (nl ? sl + 1 : 0);
    char *copy = malloc(len + 1);      /* no bytes past the message's end */
    memcpy(copy, msg, len);
    static const unsigned wants[] = { URLFETCH_BODY, URLFETCH_BINARY,
                                      URLFETCH_BINARY | URLFETCH_STRUCTURE, URLFETCH_STRUCTURE };
    for (size_t i = 0; i < 4; i++) {
        struct evbuffer *out = evbuffer_new();
        /* NIL: nothing of a half-made answer left */
        if (imap_urlfetch_data(copy, len, &u, wants[i], i > 0, out) < 0 &&
            evbuffer_get_length(out) > 0)
            __builtin_trap();
        evbuffer_free(out);
    }
    free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == 0xfc) {
        urlfetch_data(data + 1, size - 1);
        return 0;
    }
    if (size > 0 && data[0] == 0xff) {
        bytes_search(data + 1, size - 1);
        return 0;
    }
    if (size > 0 && data[0] == 0xfe) {
        addresses(data + 1, size - 1);
        return 0;
    }
    if (size > 0 && data[0] == 0xfd) {
        base_subject(data + 1, size - 1);
        return 0;
    }
    struct imap_reader r;
    imap_reader_init(&r, 4096, 8192, 16384);
    size_t split = size ? data[0] % (size + 1) : 0;
    const char *p = (const char *)data;
    size_t left = size, off = 0;
    while (left > 0) {
        size_t piece = off == 0 && split < left ? split : left;
        if (piece == 0)
            piece = left;
        size_t used;
        enum imap_read rc = imap_reader_feed(&r, p + off, piece, &used);
        if (used > piece)
            __builtin_trap();
        off += used;
        left -= used;
        if (rc == IR_COMMAND) {
            one(r.buf, r.len);
            imap_reader_reset(&r);
        } else if (rc == IR_TOO_LONG || rc == IR_BAD_LITERAL) {
            imap_reader_reset(&r);
        } else if (used == 0) {
            break;
        }
    }
    imap_reader_free(&r);
    return 0;
}
