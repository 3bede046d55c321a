/*
 * zip.c -- the entries of a zip archive in memory, for the attachment
 * policy: names from the central directory, and each entry's content when
 * it is stored or deflated. A parser of hostile bytes: every offset and
 * length is checked against the buffer before it is read; Zip64 and
 * encrypted entries are listed without content.
 *
 * The directory is checked whole before any entry is inflated: each
 * entry's local header and data must lie before the directory and apart
 * from every other entry's. Entries that share their data (so that one
 * small deflate stream is inflated thousands of times) make the archive
 * broken, never inflated twice. Inflating goes in chunks, each charged to
 * the message's budget (unpack.c) before the next: an entry is read only
 * as far as the caller wants (its first bytes, or all of it) and the
 * budget allows, and the hook's deadline is seen within one chunk.
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "filters.h"
#include "../common/util.h"

#define EOCD_MIN 22
#define CDH_MIN 46
#define LFH_MIN 30
#define CHUNK (64u << 10)

static unsigned
u16(const unsigned char *p)
{
    return (unsigned)p[0] | (unsigned)p[1] << 8;
}

static uint32_t
u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One record of the central directory and where its data lies. */
struct entry {
    const char *name;
    size_t nlen;
    bool encrypted, sized;          /* sized: csize is known (not Zip64) */
    unsigned method;
    size_t start, csize;            /* the data: p[start .. start + csize) */
    size_t lfh;                     /* its local header */
    size_t next;                    /* the next directory record */
};

/* The record at off (before end, the directory's end), its local header
 * checked against the data area [0, data_end). false: no valid record. */
static bool
entry_at(const unsigned char *p, size_t off, size_t end, size_t data_end, struct entry *e)
{
    if (end - off < CDH_MIN || memcmp(p + off, "PK\x01\x02", 4) != 0)
        return false;
    const unsigned char *h = p + off;
    size_t nlen = u16(h + 28), elen = u16(h + 30), clen = u16(h + 32);
    if (end - off - CDH_MIN < nlen + elen + clen)
        return false;
    e->name = (const char *)h + CDH_MIN;
    e->nlen = nlen;
    e->next = off + CDH_MIN + nlen + elen + clen;
    e->encrypted = (u16(h + 8) & 1) != 0;
    e->method = u16(h + 10);
    uint32_t csize = u32(h + 20);
    e->sized = csize != 0xFFFFFFFFu;
    e->lfh = u32(h + 42);
    if (e->lfh > data_end || data_end - e->lfh < LFH_MIN ||
        memcmp(p + e->lfh, "PK\x03\x04", 4) != 0)
        return false;
    e->start = e->lfh + LFH_MIN + u16(p + e->lfh + 26) + u16(p + e->lfh + 28);
    e->csize = e->sized ? csize : 0;
    return e->start <= data_end && e->csize <= data_end - e->start;
}

struct span { size_t lo, hi; };

static int
span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Every one of count records valid, and no two entries' local header and
 * data overlapping. */
static bool
layout_ok(const unsigned char *p, size_t cd_off, size_t end, size_t count)
{
    struct span *s = xcalloc(count ? count : 1, sizeof(*s));
    size_t off = cd_off, k;
    struct entry e;
    for (k = 0; k < count && entry_at(p, off, end, cd_off, &e); k++) {
        s[k] = (struct span){ e.lfh, e.start + e.csize };
        off = e.next;
    }
    bool ok = k == count;
    if (ok) {
        qsort(s, count, sizeof(*s), span_cmp);
        for (k = 1; k < count && ok; k++)
            ok = s[k].lo >= s[k - 1].hi;
    }
    free(s);
    return ok;
}

/* ------------------------------------------------------------ inflating */

struct inflater {
    z_stream zs;
    unsigned char *buf;
    size_t len, cap;
    bool done;
};

/* Inflate until f has upto bytes or the stream ends, chunk by chunk, each
 * charged to u. false when u refused. A damaged or cut stream ends there:
 * what came out so far is the content. */
static bool
inflate_to(struct inflater *f, struct unpack *u, size_t upto)
{
    while (!f->done && f->len < upto) {
        size_t want = upto - f->len < CHUNK ? upto - f->len : CHUNK;
        size_t room = unpack_room(u);
        if (room == 0)
            return unpack_take(u, 0, want);         /* refused: over the bytes */
        if (want > room)
            want = room;
        if (f->cap - f->len < want) {
            f->cap = f->len + want > f->cap * 2 ? f->len + want : f->cap * 2;
            f->buf = xrealloc(f->buf, f->cap);
        }
        f->zs.next_out = f->buf + f->len;
        f->zs.avail_out = (uInt)want;
        uInt in0 = f->zs.avail_in;
        int rc = inflate(&f->zs, Z_NO_FLUSH);
        size_t made = want - f->zs.avail_out, used = in0 - f->zs.avail_in;
        f->len += made;
        if (!unpack_take(u, used, made))
            return false;
        if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR) || (made == 0 && used == 0))
            f->done = true;
    }
    return true;
}

/* ----------------------------------------------------------------- walk */

/* One entry to fn: its head, then all of it if fn asks. 0 to go on, fn's
 * stop value, or ZIP_OVER. */
static int
deliver(const unsigned char *p, const struct entry *e, struct unpack *u, size_t head,
        zip_entry_fn *fn, void *ctx)
{
    if (e->encrypted || !e->sized || (e->method != 0 && e->method != 8)) {
        int rc = fn(e->name, e->nlen, NULL, 0, true, e->encrypted, ctx);
        return rc == ZIP_WHOLE ? 0 : rc;
    }
    if (e->method == 0) {                           /* stored: no inflating */
        bool whole = e->csize <= head;
        int rc = fn(e->name, e->nlen, p + e->start, whole ? e->csize : head, whole, false, ctx);
        if (rc == ZIP_WHOLE)
            rc = whole ? 0 : fn(e->name, e->nlen, p + e->start, e->csize, true, false, ctx);
        return rc == ZIP_WHOLE ? 0 : rc;
    }
    struct inflater f;
    memset(&f, 0, sizeof(f));
    if (inflateInit2(&f.zs, -MAX_WBITS) != Z_OK) {
        int rc = fn(e->name, e->nlen, NULL, 0, true, false, ctx);
        return rc == ZIP_WHOLE ? 0 : rc;
    }
    f.zs.next_in = (unsigned char *)p + e->start;
    f.zs.avail_in = (uInt)e->csize;                 /* below 4 GiB: a 32-bit field */
    int rc = ZIP_OVER;
    if (inflate_to(&f, u, head)) {
        rc = fn(e->name, e->nlen, f.buf, f.len, f.done, false, ctx);
        if (rc == ZIP_WHOLE && !f.done)
            rc = inflate_to(&f, u, SIZE_MAX) ? fn(e->name, e->nlen, f.buf, f.len, true, false, ctx)
                                             : ZIP_OVER;
        if (rc == ZIP_WHOLE)
            rc = 0;
    }
    inflateEnd(&f.zs);
    free(f.buf);
    return rc;
}

int
zip_walk(const unsigned char *p, size_t n, struct unpack *u, size_t head, zip_entry_fn *fn,
         void *ctx)
{
    if (n < EOCD_MIN || memcmp(p, "PK\x03\x04", 4) != 0)
        return ZIP_NOT_ZIP;
    /* the end of central directory record, within the last 64 KiB + 22 */
    size_t lo = n > 65535 + EOCD_MIN ? n - 65535 - EOCD_MIN : 0, eocd = 0;
    bool found = false;
    for (size_t i = n - EOCD_MIN + 1; i-- > lo;)
        if (memcmp(p + i, "PK\x05\x06", 4) == 0) {
            eocd = i;
            found = true;
            break;
        }
    if (!found)
        return ZIP_NOT_ZIP;
    size_t count = u16(p + eocd + 10);
    size_t cd_size = u32(p + eocd + 12), cd_off = u32(p + eocd + 16);
    if (cd_off > eocd || cd_size > eocd - cd_off)
        return ZIP_NOT_ZIP;
    if (!unpack_enter(u, n))
        return ZIP_OVER;
    int rc;
    if (!unpack_entries(u, count)) {
        rc = ZIP_OVER;
    } else if (!layout_ok(p, cd_off, cd_off + cd_size, count)) {
        rc = ZIP_BROKEN;
    } else {
        size_t off = cd_off, seen = 0;
        struct entry e;
        rc = 0;
        while (rc == 0 && seen < count && entry_at(p, off, cd_off + cd_size, cd_off, &e)) {
            rc = unpack_entry(u) ? deliver(p, &e, u, head, fn, ctx) : ZIP_OVER;
            seen++;
            off = e.next;
        }
        if (rc == 0)
            rc = (int)seen;
    }
    unpack_leave(u);
    return rc;
}
