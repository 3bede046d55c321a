/*
 * imap_fetch.c -- FETCH (RFC 3501 6.4.5, 7.4.2): the answer for each
 * message, in steps: FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY
 * and BODYSTRUCTURE (imap_bodystructure.c) from the MIME structure,
 * RFC822[.HEADER|.TEXT], and BODY[section]<partial> (HEADER,
 * HEADER.FIELDS[.NOT], TEXT, MIME, part numbers) served byte for byte from
 * the stored file, and BINARY (RFC 3516). The items are parsed from the
 * command by imap_fetch_parse.c.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/buffer.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "mime_struct.h"

#define READ_MAX (256u << 10)
#define HEADER_MAX (64u << 10)

/* ------------------------------------------------------------ sections */

/* Keep (or drop) the header fields named in "(A B C)". */
static void
filter_fields(struct evbuffer *out, const char *h, size_t hlen, const char *list, bool not)
{
    char names[64][80];
    size_t nn = 0;
    const char *p = strchr(list, '(');
    while (p && *p && *p != ')' && nn < 64) {
        p++;
        while (*p == ' ')
            p++;
        size_t l = strcspn(p, " )");
        if (l == 0)
            break;
        const char *name = p;
        size_t nl = l;
        if (*name == '"' && nl >= 2 && name[nl - 1] == '"') {
            name++;
            nl -= 2;
        }
        snprintf(names[nn++], sizeof(names[0]), "%.*s", (int)(nl < 79 ? nl : 79), name);
        p += l;
    }
    /* each field as stored, its continuation lines and line end with it */
    struct rfc5322_field f;
    const char *start = h, *next;
    while ((next = rfc5322_next(start, h + hlen, &f)) != NULL) {
        bool listed = false;
        for (size_t k = 0; k < nn && !listed; k++)
            listed = rfc5322_is(&f, names[k]);
        if (listed != not)
            evbuffer_add(out, start, (size_t)(next - start));
        start = next;
    }
    evbuffer_add(out, "\r\n", 2);
}

int
fetch_section_range(const char *msg, size_t len, const struct mime_tree *t, const char *section,
              const char **p, size_t *n, struct evbuffer *buf)
{
    const struct mime_part *root = &t->parts[0], *mp = root;
    const char *rest = section;
    size_t used = 0;
    if (isdigit((unsigned char)section[0])) {
        mp = mime_section(t, section, strlen(section), &used);
        if (mp == NULL)
            return -1;
        rest = section + used;
        if (*rest == '.')
            rest++;
        else if (*rest)
            return -1;
        if (*rest == '\0') {
            /* BODY[N]: the part's body (a non-multipart message's 1: its body) */
            *p = msg + mp->body_off;
            *n = mp->body_len;
            return 0;
        }
        if (strcmp(rest, "MIME") == 0) {
            *p = msg + mp->off;
            *n = mp->header_len;
            return 0;
        }
        /* HEADER and TEXT of a part are those of the message it carries */
        if (strcmp(mp->type, "message") != 0 || strcmp(mp->subtype, "rfc822") != 0 ||
            mp->nchildren != 1)
            return -1;
        mp = &t->parts[mp->children[0]];
    }
    if (*rest == '\0') {
        *p = msg;
        *n = len;
    } else if (strcmp(rest, "HEADER") == 0) {
        *p = msg + mp->off;
        *n = mp->header_len;
    } else if (strcmp(rest, "TEXT") == 0) {
        *p = msg + mp->body_off;
        *n = mp->body_len;
    } else if (strncmp(rest, "HEADER.FIELDS.NOT", 17) == 0) {
        filter_fields(buf, msg + mp->off, mp->header_len, rest + 17, true);
        return 1;
    } else if (strncmp(rest, "HEADER.FIELDS", 13) == 0) {
        filter_fields(buf, msg + mp->off, mp->header_len, rest + 13, false);
        return 1;
    } else {
        return -1;
    }
    return 0;
}

/* The window <offset.length> of n bytes asks for. */
static void
partial_window(const struct fetch_item *it, size_t n, size_t *off, size_t *take)
{
    *off = 0;
    *take = n;
    if (it->partial) {
        *off = it->p_off > n ? n : (size_t)it->p_off;
        *take = n - *off < it->p_len ? n - *off : (size_t)it->p_len;
    }
}

static void
put_literal_part(struct evbuffer *out, struct evbuffer *data, const struct fetch_item *it)
{
    size_t off, take;
    partial_window(it, evbuffer_get_length(data), &off, &take);
    evbuffer_add_printf(out, "{%zu}\r\n", take);
    if (off)
        evbuffer_drain(data, off);
    evbuffer_remove_buffer(data, out, take);
}

/* ------------------------------------------------------------ answer */

/* A message's bytes (read, or mapped), shared by the answers that point
 * into them: freed when the last of those is sent (on the loop) and the
 * worker is done with them, whichever comes last. */
struct fetch_data {
    int refs;
    void *map;
    size_t maplen;
    char *copy;
};

static void
data_unref(struct fetch_data *d)
{
    if (d == NULL || __atomic_sub_fetch(&d->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    if (d->map)
        munmap(d->map, d->maplen);
    free(d->copy);
    free(d);
}

static void
data_sent(const void *p, size_t len, void *arg)
{
    (void)p;
    (void)len;
    data_unref(arg);
}

/* A literal of the message's own bytes: the answer points into them, no
 * copy is made however often they are asked for. */
static void
put_range(struct evbuffer *out, struct fetch_data *d, const char *p, size_t n,
          const struct fetch_item *it)
{
    size_t off, take;
    partial_window(it, n, &off, &take);
    evbuffer_add_printf(out, "{%zu}\r\n", take);
    if (take == 0)
        return;
    if (d == NULL) {
        evbuffer_add(out, p + off, take);
        return;
    }
    __atomic_add_fetch(&d->refs, 1, __ATOMIC_ACQ_REL);
    if (evbuffer_add_reference(out, p + off, take, data_sent, d) < 0) {
        data_unref(d);
        evbuffer_add(out, p + off, take);
    }
}

/* A whole file into the answer: up to READ_MAX read straight into the
 * buffer's own space (one read, no mapping); a bigger one without copying
 * it (evbuffer_add_file: out drains to no descriptor, so libevent maps it),
 * the buffer owning a duplicate of the descriptor. A mapping per message
 * cost more than the copy it saves: its munmap, on the loop, flushes the
 * TLB of every core running one of the role's threads, and the kernel's
 * copy out of it takes a page fault per 4 KB (FETCH 1:1000 (BODY.PEEK[])
 * of 4-20 KB messages: 6 syscalls and ~1.2 faults a message, 130 ms of the
 * role's CPU a FETCH, a third of it in those TLB flushes). */
static void
put_file(struct evbuffer *out, int fd, off_t len)
{
    if (len <= 0)
        return;
    off_t off = 0;
    if (len <= (off_t)READ_MAX) {
        /* one piece of space (one read, where two would split it over the
         * last chunk's tail and a new one) */
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)len, &v, 1) == 1) {
            size_t got = 0;
            while (got < (size_t)len) {
                ssize_t r = pread(fd, (char *)v.iov_base + got, (size_t)len - got, (off_t)got);
                if (r <= 0)
                    break;
                got += (size_t)r;
            }
            v.iov_len = got;
            if (evbuffer_commit_space(out, &v, 1) == 0)
                off = (off_t)got;
        }
    } else {
        int d = dup(fd);
        if (d >= 0 && evbuffer_add_file(out, d, 0, len) == 0)
            return;
        if (d >= 0)
            close(d);
    }
    /* no descriptor to spare, or a read cut short: read the rest (the
     * count is out already) */
    char buf[65536];
    while (off < len) {
        ssize_t r = pread(fd, buf, sizeof(buf), off);
        if (r <= 0)
            break;
        evbuffer_add(out, buf, (size_t)r);
        off += r;
    }
    memset(buf, ' ', sizeof(buf));
    while (off < len) {             /* a file cut short under us: keep the framing */
        size_t k = len - off > (off_t)sizeof(buf) ? sizeof(buf) : (size_t)(len - off);
        evbuffer_add(out, buf, k);
        off += (off_t)k;
    }
}

/* ------------------------------------------------------------ BINARY */

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int
fetch_decode_body(const char *p, size_t n, const char *cte, struct evbuffer *out)
{
    if (cte[0] == '\0' || strcmp(cte, "7BIT") == 0 || strcmp(cte, "8BIT") == 0 ||
        strcmp(cte, "BINARY") == 0) {
        evbuffer_add(out, p, n);
        return 0;
    }
    char buf[4096];
    size_t o = 0;
    if (strcmp(cte, "BASE64") == 0) {
        unsigned acc = 0;
        int bits = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] == '=')
                break;
            int v = base64_value((unsigned char)p[i]);
            if (v < 0)
                continue;
            acc = (acc << 6) | (unsigned)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                buf[o++] = (char)((acc >> bits) & 0xff);
                if (o == sizeof(buf)) {
                    evbuffer_add(out, buf, o);
                    o = 0;
                }
            }
        }
        evbuffer_add(out, buf, o);
        return 0;
    }
    if (strcmp(cte, "QUOTED-PRINTABLE") == 0) {
        size_t i = 0;
        while (i < n) {
            /* one line: its white space at the end goes (RFC 2045 6.7) */
            size_t e = i;
            while (e < n && p[e] != '\n')
                e++;
            size_t le = e;
            if (le > i && p[le - 1] == '\r')
                le--;
            size_t te = le;
            while (te > i && (p[te - 1] == ' ' || p[te - 1] == '\t'))
                te--;
            bool soft = false;
            for (size_t k = i; k < te; k++) {
                if (o + 2 >= sizeof(buf)) {
                    evbuffer_add(out, buf, o);
                    o = 0;
                }
                if (p[k] == '=') {
                    if (k + 1 == te) {
                        soft = true;
                        break;
                    }
                    int h = k + 2 < te ? hexval((unsigned char)p[k + 1]) : -1;
                    int l = k + 2 < te ? hexval((unsigned char)p[k + 2]) : -1;
                    if (h >= 0 && l >= 0) {
                        buf[o++] = (char)(h * 16 + l);
                        k += 2;
                        continue;
                    }
                }
                buf[o++] = p[k];
            }
            if (e < n && !soft) {
                buf[o++] = '\r';
                buf[o++] = '\n';
            }
            i = e < n ? e + 1 : n;
        }
        evbuffer_add(out, buf, o);
        return 0;
    }
    return -1;
}

/* A literal of decoded bytes: literal8 (~{n}) when they hold a NUL. */
static void
put_binary(struct evbuffer *out, struct evbuffer *data, const struct fetch_item *it)
{
    size_t off, take;
    size_t n = evbuffer_get_length(data);
    off = it->partial ? (it->p_off > n ? n : (size_t)it->p_off) : 0;
    take = it->partial ? (n - off < it->p_len ? n - off : (size_t)it->p_len) : n;
    if (off)
        evbuffer_drain(data, off);
    struct evbuffer_ptr nul = evbuffer_search(data, "\0", 1, NULL);
    bool binary = nul.pos >= 0 && (size_t)nul.pos < take;
    evbuffer_add_printf(out, "%s{%zu}\r\n", binary ? "~" : "", take);
    evbuffer_remove_buffer(data, out, take);
}

/* ------------------------------------------------------------ answer */

/* One message's answer being written, item by item. */
struct fetch_msg {
    size_t idx;
    struct folder_msg fm;       /* the message as the index had it */
    struct fetch_data *data;    /* msg's bytes when they are a copy or a mapping */
    const char *msg;
    size_t len;
    int fd;
    off_t file_len;
    bool need_data, whole_only, flags_done;
    struct mime_tree *t;
    size_t item;                /* the next item to answer */
    const char *sep;
};

struct fetch_run {
    struct fetch_spec fs;
    struct folder *mb;
    size_t *idx, n, pos;
    bool uid_cmd;
    size_t expunged;
    bool unknown_cte;
    struct fetch_msg *cur;
    char *hbuf;                 /* the open message's header, when that is all it needs */
};

static void
msg_close(struct fetch_msg **mp)
{
    struct fetch_msg *m = *mp;
    if (m == NULL)
        return;
    mime_tree_free(&m->t);
    data_unref(m->data);
    if (m->fd >= 0)
        close(m->fd);
    free(m);
    *mp = NULL;
}

static bool
is_data_item(const struct fetch_item *it)
{
    return it->kind != FI_FLAGS && it->kind != FI_UID && it->kind != FI_INTERNALDATE &&
           it->kind != FI_SIZE && it->kind != FI_MODSEQ;
}

/* The message's file as the items need it, \Seen set if they set it, and
 * the start of its answer; NULL if it is gone (expunged by another
 * session: counted). */
static struct fetch_msg *
msg_open(struct fetch_run *r, struct evbuffer *out, size_t idx)
{
    struct folder *mb = r->mb;
    const struct fetch_spec *fs = &r->fs;
    struct fetch_msg *m = xcalloc(1, sizeof(*m));
    m->idx = idx;
    m->fd = -1;
    m->sep = "";
    if (folder_msg(mb, idx, &m->fm) < 0) {
        free(m);
        return NULL;
    }
    bool need_data = false, set_seen = false;
    for (size_t i = 0; i < fs->n; i++) {
        const struct fetch_item *it = &fs->v[i];
        if (is_data_item(it))
            need_data = true;
        if ((it->kind == FI_RFC822 || it->kind == FI_RFC822_TEXT ||
             ((it->kind == FI_SECTION || it->kind == FI_BINARY) && !it->peek)) &&
            !mb->readonly && !(m->fm.flags & MF_SEEN))
            set_seen = true;
    }
    if (m->fm.expunged && (need_data || set_seen)) {
        /* its file is gone: nothing of it to answer but what the view
         * knows, and a FETCH that asks for more says NO at its end */
        r->expunged++;
        free(m);
        return NULL;
    }
    /* What of the file the items need: its header only, or the whole
     * message as it is (sent straight from the file), or more. */
    bool header_only = need_data, whole_only = need_data;
    for (size_t i = 0; i < fs->n; i++) {
        const struct fetch_item *it = &fs->v[i];
        bool hdr = it->kind == FI_ENVELOPE || it->kind == FI_RFC822_HEADER ||
                   (it->kind == FI_SECTION && !it->partial &&
                    (strcmp(it->section, "HEADER") == 0 || strncmp(it->section, "HEADER.FIELDS", 13) == 0));
        bool whole = (it->kind == FI_RFC822 && !it->partial) ||
                     ((it->kind == FI_SECTION || it->kind == FI_BINARY) && it->section[0] == '\0' &&
                      !it->partial);
        if (is_data_item(it) && !hdr)
            header_only = false;
        if (is_data_item(it) && !whole)
            whole_only = false;
    }
    m->need_data = need_data;
    m->whole_only = whole_only;
    if (need_data) {
        char path[2100];
        folder_path(mb, &m->fm, path, sizeof(path));
        m->fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (m->fd < 0 || fstat(m->fd, &st) < 0) {
            r->expunged++;
            msg_close(&m);
            return NULL;            /* gone: expunged by another session */
        }
        m->file_len = st.st_size;
        size_t len = (size_t)st.st_size;
        if (whole_only) {
            m->msg = "";            /* served from the file */
        } else if (header_only || len <= READ_MAX) {
            /* the header (the first 4 KB mostly, at most HEADER_MAX) into
             * the run's one buffer, copied into the answer: no allocation
             * per message, nothing freed by the loop's thread (64 KB a
             * message, held until sent, cost 3,600 page faults a FETCH of
             * 1,000 headers); or a small message whole, pointed into by the
             * answer: cheaper read than mapped */
            size_t want_max = header_only ? HEADER_MAX : len;
            char *copy;
            if (header_only) {
                if (r->hbuf == NULL)
                    r->hbuf = xmalloc(HEADER_MAX + 1);
                copy = r->hbuf;
            } else {
                m->data = xcalloc(1, sizeof(*m->data));
                m->data->refs = 1;
                m->data->copy = xmalloc(want_max + 1);
                copy = m->data->copy;
            }
            size_t got = 0;
            while (got < want_max) {
                size_t want = header_only && got == 0 && want_max > 4096 ? 4096 : want_max - got;
                ssize_t k = read(m->fd, copy + got, want);
                if (k <= 0)
                    break;
                got += (size_t)k;
                if (header_only && (rfc5322_header_len(copy, got) < got || (size_t)k < want))
                    break;
            }
            m->msg = copy;
            m->len = got;
        } else {
            void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, m->fd, 0);
            if (map == MAP_FAILED) {
                r->expunged++;
                msg_close(&m);
                return NULL;
            }
            m->data = xcalloc(1, sizeof(*m->data));
            m->data->refs = 1;
            m->data->map = map;
            m->data->maplen = len;
            m->msg = map;
            m->len = len;
        }
    }
    if (set_seen) {
        struct folder_msg after;
        /* the client hears of it in this answer (FLAGS below) */
        if (folder_store(mb, idx, 1, MF_SEEN, 0, false, 0, true, &after) == 0) {
            m->fm = after;
            m->fm.flags |= MF_SEEN;
            m->flags_done = false;
        } else {
            set_seen = false;
        }
    }
    /* the parts are parsed only when an item needs them */
    bool need_parts = false;
    for (size_t i = 0; i < fs->n; i++) {
        enum fetch_kind k = fs->v[i].kind;
        if (k == FI_BODYSTRUCTURE || k == FI_BODY || k == FI_BINARY || k == FI_BINARY_SIZE ||
            (k == FI_SECTION && isdigit((unsigned char)fs->v[i].section[0])))
            need_parts = true;
    }
    m->t = !need_data || whole_only ? NULL
         : need_parts ? mime_parse_struct(m->msg, m->len) : mime_parse_root(m->msg, m->len);
    evbuffer_add_printf(out, "* %zu FETCH (", idx + 1);
    if (r->uid_cmd && !fs->has_uid) {
        evbuffer_add_printf(out, "UID %lu", (unsigned long)m->fm.uid);
        m->sep = " ";
    }
    if (!set_seen)
        m->flags_done = true;       /* nothing changed that it must tell */
    return m;
}

/* The decoded body of a BINARY section into b; -1: no such part, -2: an
 * encoding we do not know. */
static int
binary_part(const struct fetch_msg *m, const char *section, struct evbuffer *b)
{
    if (section[0] == '\0') {
        evbuffer_add(b, m->msg, m->len);
        return 0;
    }
    size_t used;
    const struct mime_part *mp = mime_section(m->t, section, strlen(section), &used);
    if (mp == NULL || section[used] != '\0')
        return -1;
    if (strcmp(mp->type, "multipart") == 0 || strcmp(mp->type, "message") == 0) {
        evbuffer_add(b, m->msg + mp->body_off, mp->body_len);
        return 0;
    }
    return fetch_decode_body(m->msg + mp->body_off, mp->body_len, mp->encoding, b) < 0 ? -2 : 0;
}

/* Answer the message's items into out until it holds limit bytes or the
 * clock says until (one item at least); true when they are all answered. */
static bool
msg_items(struct fetch_run *r, struct fetch_msg *m, struct evbuffer *out, size_t limit,
          double until)
{
    struct folder *mb = r->mb;
    const struct fetch_spec *fs = &r->fs;
    const struct folder_msg *mm = &m->fm;
    const char *msg = m->msg;
    size_t len = m->len;
    bool first = true;
    for (; m->item < fs->n; m->item++) {
        if (!first && (evbuffer_get_length(out) >= limit || time_mono() >= until))
            return false;
        first = false;
        const struct fetch_item *it = &fs->v[m->item];
        evbuffer_add(out, m->sep, strlen(m->sep));
        m->sep = " ";
        switch (it->kind) {
        case FI_FLAGS:
            evbuffer_add(out, "FLAGS ", 6);
            imap_put_flags(out, mb, mm->flags, mm->kw);
            m->flags_done = true;
            break;
        case FI_UID:
            evbuffer_add_printf(out, "UID %lu", (unsigned long)mm->uid);
            break;
        case FI_MODSEQ:
            evbuffer_add_printf(out, "MODSEQ (%llu)", (unsigned long long)mm->modseq);
            break;
        case FI_INTERNALDATE: {
            time_t d = folder_internaldate(mb, &m->fm);
            struct tm tm;
            char buf[64];
            localtime_r(&d, &tm);
            strftime(buf, sizeof(buf), "%d-%b-%Y %H:%M:%S %z", &tm);
            evbuffer_add_printf(out, "INTERNALDATE \"%s\"", buf);
            break;
        }
        case FI_SIZE:
            evbuffer_add_printf(out, "RFC822.SIZE %llu",
                                (unsigned long long)(m->file_len ? (uint64_t)m->file_len
                                                     : m->need_data ? (uint64_t)len
                                                     : folder_size(mb, &m->fm)));
            break;
        case FI_ENVELOPE:
            evbuffer_add(out, "ENVELOPE ", 9);
            fetch_envelope(out, msg, m->t->parts[0].header_len);
            break;
        case FI_BODY:
        case FI_BODYSTRUCTURE:
            evbuffer_add_printf(out, "%s ", it->kind == FI_BODY ? "BODY" : "BODYSTRUCTURE");
            fetch_bodystructure(out, msg, m->t, &m->t->parts[0], it->kind == FI_BODYSTRUCTURE, 0);
            break;
        case FI_RFC822:
        case FI_RFC822_HEADER:
        case FI_RFC822_TEXT: {
            const char *name = it->kind == FI_RFC822 ? "RFC822"
                             : it->kind == FI_RFC822_HEADER ? "RFC822.HEADER" : "RFC822.TEXT";
            if (m->whole_only) {
                evbuffer_add_printf(out, "%s {%lld}\r\n", name, (long long)m->file_len);
                put_file(out, m->fd, m->file_len);
                break;
            }
            const char *sec = it->kind == FI_RFC822 ? "" : it->kind == FI_RFC822_HEADER ? "HEADER" : "TEXT";
            const char *p = msg;
            size_t n = 0;
            fetch_section_range(msg, len, m->t, sec, &p, &n, NULL);
            evbuffer_add_printf(out, "%s ", name);
            put_range(out, m->data, p, n, it);
            break;
        }
        case FI_SECTION:
        case FI_BINARY: {
            const char *word = it->kind == FI_SECTION ? "BODY" : "BINARY";
            if (m->whole_only) {
                evbuffer_add_printf(out, "%s[] {%lld}\r\n", word, (long long)m->file_len);
                put_file(out, m->fd, m->file_len);
                break;
            }
            struct evbuffer *b = evbuffer_new();
            const char *p = NULL;
            size_t n = 0;
            int rc = it->kind == FI_SECTION
                         ? fetch_section_range(msg, len, m->t, it->section, &p, &n, b)
                         : binary_part(m, it->section, b);
            evbuffer_add_printf(out, "%s[%s]", word, it->section);
            if (it->partial)
                evbuffer_add_printf(out, "<%llu>", (unsigned long long)it->p_off);
            evbuffer_add(out, " ", 1);
            if (rc == -2)
                r->unknown_cte = true;
            if (rc < 0)
                evbuffer_add(out, "NIL", 3);
            else if (it->kind == FI_BINARY)
                put_binary(out, b, it);
            else if (rc == 0)
                put_range(out, m->data, p, n, it);
            else
                put_literal_part(out, b, it);
            evbuffer_free(b);
            break;
        }
        case FI_BINARY_SIZE: {
            struct evbuffer *b = evbuffer_new();
            int rc = binary_part(m, it->section, b);
            evbuffer_add_printf(out, "BINARY.SIZE[%s] ", it->section);
            if (rc == -2)
                r->unknown_cte = true;
            if (rc < 0)
                evbuffer_add(out, "NIL", 3);
            else
                evbuffer_add_printf(out, "%zu", evbuffer_get_length(b));
            evbuffer_free(b);
            break;
        }
        }
    }
    /* a \Seen set by this FETCH is told (RFC 3501 6.4.5) */
    if (!m->flags_done) {
        evbuffer_add(out, m->sep, strlen(m->sep));
        evbuffer_add(out, "FLAGS ", 6);
        imap_put_flags(out, mb, mm->flags, mm->kw);
        m->sep = " ";
    }
    bool has_modseq = false;
    for (size_t i = 0; i < fs->n; i++)
        has_modseq |= fs->v[i].kind == FI_MODSEQ;
    if (!has_modseq && (fs->modseq || (fs->flags_modseq && !m->flags_done))) {
        evbuffer_add(out, m->sep, strlen(m->sep));
        evbuffer_add_printf(out, "MODSEQ (%llu)", (unsigned long long)mm->modseq);
    }
    evbuffer_add(out, ")\r\n", 3);
    return true;
}

struct fetch_run *
fetch_run_new(const struct fetch_spec *fs, size_t *idx, size_t n, bool uid_cmd, struct folder *mb)
{
    struct fetch_run *r = xcalloc(1, sizeof(*r));
    r->fs = *fs;
    r->idx = idx;
    r->n = n;
    r->uid_cmd = uid_cmd;
    r->mb = mb;
    /* with CONDSTORE on, FLAGS come with MODSEQ (RFC 7162 3.1.4.1) */
    if (fs->flags_modseq)
        for (size_t i = 0; i < fs->n; i++)
            if (fs->v[i].kind == FI_FLAGS)
                r->fs.modseq = true;
    return r;
}

size_t
fetch_run_expunged(const struct fetch_run *r)
{
    return r->expunged;
}

bool
fetch_run_unknown_cte(const struct fetch_run *r)
{
    return r->unknown_cte;
}

bool
fetch_run_step(struct fetch_run *r, struct evbuffer *out, double until)
{
    size_t limit = evbuffer_get_length(out) + FETCH_STEP_BYTES;
    while (r->pos < r->n) {
        if (r->cur == NULL) {
            if (r->idx[r->pos] >= r->mb->n ||
                (r->cur = msg_open(r, out, r->idx[r->pos])) == NULL) {
                r->pos++;
                continue;
            }
        }
        if (msg_items(r, r->cur, out, limit, until)) {
            msg_close(&r->cur);
            r->pos++;
        }
        if (evbuffer_get_length(out) >= limit || time_mono() >= until)
            break;
    }
    return r->pos >= r->n;
}

void
fetch_run_free(struct fetch_run **rp)
{
    struct fetch_run *r = *rp;
    if (r == NULL)
        return;
    msg_close(&r->cur);
    free(r->hbuf);
    free(r->idx);
    free(r);
    *rp = NULL;
}
