/*
 * unpack_walk.c -- the entries of an archive in memory, for the attachment
 * policy, read by libarchive: every format it reads (zip, 7z, rar, rar5,
 * tar, cpio, iso9660, cab, lha, xar, ar), tar and cpio in the compressions
 * it has built in, and a lone compressed file as one entry (its "raw"
 * format). Each entry's name, and its content as far as the caller wants.
 *
 * libarchive reads our buffer (archive_read_open_memory) and nothing else:
 * no file and no other program. The formats are named one by one, not
 * "all": mtree's reader opens the files its entries name on disk. A
 * decompression filter is enabled only when this libarchive has it built
 * in: the others (lzop, lrzip, grzip, and any whose library it was built
 * without) run an external program, and their support call says
 * ARCHIVE_WARN, which a probe on a scratch reader sees once. Nothing is
 * extracted, so links and absolute paths are names like any other.
 *
 * What the decompressors make is charged to the message's budget
 * (unpack.c) after every call into libarchive, before anything is kept:
 * each filter's output (gzip, xz, ...: the stream a tar or cpio is read
 * from), and each data block of a format that compresses its entries
 * itself (zip, 7z, rar, cab, lha, xar, iso9660's zisofs), in full, whatever part of it is
 * kept. Skipping an entry in those formats means decompressing it (a solid
 * 7z or rar, a zip read as a stream), out of sight of the budget, so they
 * are read through to the end of each entry instead, charged like the
 * rest; a zip, read by libarchive's seekable reader from its central
 * directory, skips for free.
 *
 * That reader takes each local header once, by its offset, and names the
 * entry from there: directory records that share one (thousands pointing
 * at one deflate stream, a bomb's trick), or whose name is not the local
 * header's (what unzip or Windows would extract is not what was checked),
 * would be dropped silently. So the directory is checked first, without
 * inflating anything: each record's local header where it says, under
 * the same name, and no two entries' local header and data overlapping.
 */
#include <archive.h>
#include <archive_entry.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "filters.h"
#include "../common/util.h"

/* ------------------------------------------------------ zip directory */

#define EOCD_MIN 22
#define CDH_MIN 46
#define LFH_MIN 30
#define FULL32 0xFFFFFFFFu

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

static uint64_t
u64(const unsigned char *p)
{
    return (uint64_t)u32(p) | (uint64_t)u32(p + 4) << 32;
}

/* The Zip64 extended information of a directory record: the 8-byte
 * values of the fields that are full in the record, in their order
 * (uncompressed size, compressed size, local header offset). false when
 * one is wanted and missing. */
static bool
zip64_extra(const unsigned char *ex, size_t elen, uint32_t usize, uint64_t *csize,
            uint64_t *lfh)
{
    if (*csize != FULL32 && *lfh != FULL32)
        return true;
    for (size_t i = 0; elen - i >= 4;) {
        size_t tag = u16(ex + i), len = u16(ex + i + 2);
        if (len > elen - i - 4)
            return false;
        if (tag == 0x0001) {
            const unsigned char *f = ex + i + 4;
            size_t k = usize == FULL32 ? 8 : 0;
            if (*csize == FULL32) {
                if (len < k + 8)
                    return false;
                *csize = u64(f + k);
                k += 8;
            }
            if (*lfh == FULL32) {
                if (len < k + 8)
                    return false;
                *lfh = u64(f + k);
            }
            return true;
        }
        i += 4 + len;
    }
    return false;
}

/* Where the directory lies and how many records it claims, from the end
 * of central directory record and its Zip64 one, found and checked as
 * libarchive's seekable reader finds and checks them (the last signature
 * in the last 16 KiB; one volume; the Zip64 record preferred when it is
 * sound), so that both read the same directory. false: none that fits. */
#define EOCD_TAIL 16384
static bool
zip_end(const unsigned char *p, size_t n, uint64_t *count, uint64_t *cd_off, uint64_t *cd_end)
{
    size_t lo = n > EOCD_TAIL ? n - EOCD_TAIL : 0, eocd = 0;
    bool found = false;
    for (size_t i = n - EOCD_MIN + 1; i-- > lo + 1;)   /* libarchive skips the first */
        if (memcmp(p + i, "PK\x05\x06", 4) == 0) {
            eocd = i;
            found = true;
            break;
        }
    if (!found)
        return false;
    const unsigned char *e = p + eocd;
    bool ok = u16(e + 4) == 0 && u16(e + 6) == 0 && u16(e + 8) == u16(e + 10);
    *count = u16(e + 10);
    uint64_t size = u32(e + 12);
    *cd_off = u32(e + 16);
    *cd_end = eocd;
    const unsigned char *l = eocd - lo >= 20 ? e - 20 : NULL; /* the Zip64 locator */
    if (l && memcmp(l, "PK\x06\x07", 4) == 0 && u32(l + 4) == 0 && u32(l + 16) == 1) {
        uint64_t z = u64(l + 8);
        const unsigned char *r = z <= n && n - z >= 56 ? p + z : NULL;
        if (r && memcmp(r, "PK\x06\x06", 4) == 0 && u64(r + 4) >= 44 &&
            u64(r + 4) <= 16384 - 12 && u64(r + 4) + 12 <= n - z && u32(r + 16) == 0 &&
            u32(r + 20) == 0 && u64(r + 24) == u64(r + 32)) {
            ok = true;
            *count = u64(r + 32);
            size = u64(r + 40);
            *cd_off = u64(r + 48);
            *cd_end = z;
        }
    }
    return ok && *cd_off <= *cd_end && size == *cd_end - *cd_off;
}

struct span { uint64_t lo, hi; };

static int
span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The directory against the local headers (see the top). 0, or
 * UNPACK_BROKEN, UNPACK_NOT_ARCHIVE (no end record), UNPACK_OVER (more
 * entries than the budget has left, before anything else). */
static int
zip_directory_check(const unsigned char *p, size_t n, struct unpack *u)
{
    uint64_t count, cd_off, cd_end;
    if (n < EOCD_MIN || !zip_end(p, n, &count, &cd_off, &cd_end))
        return UNPACK_NOT_ARCHIVE;
    if (count > SIZE_MAX || !unpack_entries(u, (size_t)count))
        return UNPACK_OVER;
    struct span *s = xcalloc(count ? (size_t)count : 1, sizeof(*s));
    uint64_t off = cd_off, k;
    for (k = 0; k < count; k++) {
        if (cd_end - off < CDH_MIN || memcmp(p + off, "PK\x01\x02", 4) != 0)
            break;
        const unsigned char *h = p + off;
        size_t nlen = u16(h + 28), elen = u16(h + 30), clen = u16(h + 32);
        if (cd_end - off - CDH_MIN < nlen + elen + clen)
            break;
        uint64_t csize = u32(h + 20), lfh = u32(h + 42);
        if (!zip64_extra(h + CDH_MIN + nlen, elen, u32(h + 24), &csize, &lfh))
            break;
        if (lfh > cd_off || cd_off - lfh < LFH_MIN || memcmp(p + lfh, "PK\x03\x04", 4) != 0)
            break;
        const unsigned char *l = p + lfh;
        uint64_t start = lfh + LFH_MIN + u16(l + 26) + u16(l + 28);
        if (u16(l + 26) != nlen || start > cd_off || csize > cd_off - start ||
            memcmp(l + LFH_MIN, h + CDH_MIN, nlen) != 0)
            break;
        s[k] = (struct span){ lfh, start + csize };
        off += CDH_MIN + nlen + elen + clen;
    }
    bool ok = k == count && off == cd_end;          /* libarchive reads on to the end */
    if (ok) {
        qsort(s, (size_t)count, sizeof(*s), span_cmp);
        for (k = 1; k < count && ok; k++)
            ok = s[k].lo >= s[k - 1].hi;
    }
    free(s);
    return ok ? 0 : UNPACK_BROKEN;
}

/* ------------------------------------------- 7z and xar header sizes */

/* A 7z's header is usually LZMA-compressed ("encoded"), and a xar's table
 * of contents zlib-compressed: libarchive decodes either inside its first
 * call, before any entry and out of the budget's sight (a 38 KB 7z made it
 * decode 256 MB in 5 s, 275 MB resident). So they are charged here first,
 * from the bytes libarchive reads them from:
 *  - a 7z's encoded header: the unpack sizes its folders declare, read as
 *    libarchive reads them (read_StreamsInfo, which this follows step by
 *    step: a parse that differed could be led to read smaller sizes than
 *    libarchive), all of them, which is more than libarchive decodes (the
 *    main stream of the first folder, and no byte past its size);
 *  - a xar's table of contents: libarchive inflates all of its compressed
 *    bytes, whatever size the header declares, and compares the two only
 *    at the end. So the declared size is charged, then the table inflated
 *    here into a scratch buffer, never past it: more is unreadable (as
 *    libarchive would find, after the fact). The files it lists count
 *    against the entries first, like a zip's directory records.
 * Each returns 0, UNPACK_OVER or UNPACK_UNREADABLE. */

struct cur {
    const unsigned char *p;
    size_t n, i;
    bool bad;                       /* past the end, or not as libarchive reads it */
};

static unsigned
byte(struct cur *c)
{
    if (c->i >= c->n) {
        c->bad = true;
        return 0;
    }
    return c->p[c->i++];
}

/* 7z's NUMBER: the first byte's leading one bits count the bytes after
 * it (little-endian), its other bits are the high ones. */
static uint64_t
number(struct cur *c)
{
    unsigned first = byte(c), mask = 0x80;
    uint64_t v = 0;
    for (int k = 0; k < 8; k++, mask >>= 1) {
        if ((first & mask) == 0)
            return v | (uint64_t)(first & (mask - 1)) << (8 * k);
        v |= (uint64_t)byte(c) << (8 * k);
    }
    return v;
}

static void
skip(struct cur *c, uint64_t k)
{
    if (k > c->n - c->i)
        c->bad = true;
    else
        c->i += (size_t)k;
}

/* CRCs of count items: all defined, or a vector of count bits (the high
 * bit first, as libarchive's read_Bools) saying which. */
static void
digests(struct cur *c, uint64_t count)
{
    uint64_t defined = count;
    if (byte(c) == 0) {
        unsigned bits = 0;
        defined = 0;
        for (uint64_t k = 0; k < count && !c->bad; k++) {
            if (k % 8 == 0)
                bits = byte(c);
            defined += bits >> (7 - k % 8) & 1;
        }
    }
    skip(c, defined * 4);
}

#define SZ_MAX_ITEMS 1024           /* pack streams, folders */
#define SZ_MAX_CODERS 4             /* per folder, as libarchive */
#define SZ_MAX_STREAMS 64           /* in or out of one coder */

/* The sum of the unpack sizes of an encoded header's folders. */
static uint64_t
sevenzip_encoded_size(struct cur *c)
{
    unsigned t = byte(c);
    if (t == 0x06) {                                /* PackInfo */
        number(c);                                  /* where the packs start */
        uint64_t packs = number(c);
        if (packs == 0 || packs > SZ_MAX_ITEMS || byte(c) != 0x09)
            c->bad = true;                          /* libarchive needs their sizes */
        for (uint64_t k = 0; k < packs && !c->bad; k++)
            number(c);
        if ((t = byte(c)) == 0x0A) {                /* their CRCs */
            digests(c, packs);
            t = byte(c);
        }
        if (t != 0x00)
            c->bad = true;
        t = byte(c);
    }
    if (t != 0x07 || byte(c) != 0x0B)               /* UnpackInfo, Folder */
        c->bad = true;
    uint64_t folders = number(c), outs = 0;
    if (folders > SZ_MAX_ITEMS || byte(c) != 0)     /* not external */
        c->bad = true;
    for (uint64_t f = 0; f < folders && !c->bad; f++) {
        uint64_t coders = number(c), in = 0, out = 0;
        if (coders > SZ_MAX_CODERS)
            c->bad = true;
        for (uint64_t k = 0; k < coders && !c->bad; k++) {
            unsigned flag = byte(c);
            skip(c, flag & 0x0F);                   /* the method id */
            uint64_t ci = 1, co = 1;
            if (flag & 0x10) {
                ci = number(c);
                co = number(c);
            }
            if (flag & 0x20)
                skip(c, number(c));                 /* its properties */
            if ((flag & 0x80) || ci > SZ_MAX_STREAMS || co > SZ_MAX_STREAMS)
                c->bad = true;
            in += ci;
            out += co;
        }
        if (out == 0 || in + 1 < out)
            c->bad = true;
        for (uint64_t k = 0; k + 1 < out && !c->bad; k++) {
            number(c);                              /* bind pairs */
            number(c);
        }
        uint64_t packed = c->bad ? 0 : in - (out - 1);
        for (uint64_t k = 0; packed > 1 && k < packed && !c->bad; k++)
            number(c);
        outs += out;
    }
    if (byte(c) != 0x0C)                            /* CodersUnpackSize */
        c->bad = true;
    uint64_t sum = 0;
    for (uint64_t k = 0; k < outs && !c->bad; k++) {
        uint64_t v = number(c);
        sum = v > UINT64_MAX - sum ? UINT64_MAX : sum + v;
    }
    return sum;
}

static bool
charge_header(struct unpack *u, uint64_t size)
{
    return unpack_take(u, size > SIZE_MAX ? SIZE_MAX : (size_t)size);
}

/* The signature header (32 bytes: the next header's offset past it at 12,
 * its size at 20), then at that offset the header: encoded (0x17), its
 * streams' description in the clear, or plain (0x01). */
static int
sevenzip_header_check(const unsigned char *p, size_t n, struct unpack *u)
{
    if (n < 32)
        return 0;                                   /* libarchive says what is wrong */
    uint64_t off = u64(p + 12), size = u64(p + 20);
    if (off > n - 32 || size > n - 32 - off || size == 0)
        return 0;
    struct cur c = { p + 32 + off, (size_t)size, 0, false };
    if (byte(&c) != 0x17)
        return 0;                                   /* a plain header, in the buffer */
    uint64_t made = sevenzip_encoded_size(&c);
    if (c.bad)
        return UNPACK_UNREADABLE;
    return charge_header(u, made) ? 0 : UNPACK_OVER;
}

static uint64_t
be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int k = 0; k < 8; k++)
        v = v << 8 | p[k];
    return v;
}

#define XAR_HEADER 28               /* where libarchive reads the table from */

/* The header (big-endian: magic, its size, version 1 at 6, the table's
 * compressed size at 8, its size at 16), then the table, zlib. */
static int
xar_toc_check(const unsigned char *p, size_t n, struct unpack *u)
{
    if (n < XAR_HEADER || p[6] != 0 || p[7] != 1)
        return 0;                                   /* libarchive says what is wrong */
    uint64_t packed = be64(p + 8), declared = be64(p + 16);
    if (!charge_header(u, declared))
        return UNPACK_OVER;
    size_t in = n - XAR_HEADER;
    if (packed < in)
        in = (size_t)packed;
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit(&zs) != Z_OK)
        fatal("unpack: zlib: out of memory");
    zs.next_in = (unsigned char *)(uintptr_t)(p + XAR_HEADER);
    zs.avail_in = in > UINT_MAX ? UINT_MAX : (uInt)in;
    unsigned char out[8192];
    uint64_t made = 0, files = 0;
    unsigned st = 0;                /* of "<file" or ":file" (a prefixed name), matched */
    int rc = 0, z = Z_OK;
    while (z == Z_OK && rc == 0) {
        zs.next_out = out;
        zs.avail_out = sizeof(out);
        z = inflate(&zs, Z_NO_FLUSH);
        size_t got = sizeof(out) - zs.avail_out;
        if ((made += got) > declared)
            rc = UNPACK_UNREADABLE;
        else if (!unpack_ok(u))
            rc = UNPACK_OVER;                       /* the deadline */
        for (size_t i = 0; i < got; i++) {
            if (st >= 1 && st <= 4 && out[i] == (unsigned char)"file"[st - 1])
                st++;
            else
                st = out[i] == '<' || out[i] == ':';
            if (st == 5) {
                files++;
                st = 0;
            }
        }
    }
    inflateEnd(&zs);
    if (rc == 0 && (files > SIZE_MAX || !unpack_entries(u, (size_t)files)))
        rc = UNPACK_OVER;
    return rc;
}

/* ----------------------------------------------------------- libarchive */

typedef int support_fn(struct archive *);

/* Every decompression filter libarchive may have built in. */
static support_fn *const filters[] = {
    archive_read_support_filter_gzip, archive_read_support_filter_bzip2,
    archive_read_support_filter_xz, archive_read_support_filter_lzma,
    archive_read_support_filter_lzip, archive_read_support_filter_zstd,
    archive_read_support_filter_lz4, archive_read_support_filter_compress,
};
#define NFILTERS (sizeof(filters) / sizeof(filters[0]))
static bool built_in[NFILTERS];
static pthread_once_t probed = PTHREAD_ONCE_INIT;

static void
probe(void)
{
    for (size_t i = 0; i < NFILTERS; i++) {
        struct archive *a = archive_read_new();
        if (a == NULL)
            fatal("unpack: libarchive: out of memory");
        built_in[i] = filters[i](a) == ARCHIVE_OK;
        archive_read_free(a);
    }
}

/* The formats read through the filters. zip, 7z and xar are read only
 * from bytes that begin as one (unpack_walk): their headers are checked
 * first, here, which a filter would hide; compressed, they are a lone
 * file whose content is opened in turn. */
static support_fn *const formats[] = {
    archive_read_support_format_rar, archive_read_support_format_rar5,
    archive_read_support_format_tar, archive_read_support_format_cpio,
    archive_read_support_format_iso9660, archive_read_support_format_cab,
    archive_read_support_format_lha, archive_read_support_format_ar,
    archive_read_support_format_raw,
};

/* One archive being read. */
struct reader {
    struct archive *a;
    struct unpack *u;
    size_t len;                 /* the archive's size */
    bool packs;                 /* the format compresses its entries itself */
    bool seeks;                 /* skipping an entry costs nothing (zip) */
    uint64_t blocks;            /* the data blocks the format made */
    uint64_t charged;
};

/* Charge what libarchive made since the last call: every filter's output
 * (the last filter, count - 1, is our buffer) and the data blocks of a
 * format that compresses. */
static bool
charge(struct reader *r)
{
    uint64_t made = r->packs ? r->blocks : 0;
    int nf = archive_filter_count(r->a);
    for (int i = 0; i + 1 < nf; i++) {
        la_int64_t b = archive_filter_bytes(r->a, i);
        made += b > 0 ? (uint64_t)b : 0;
    }
    if (made <= r->charged)
        return unpack_ok(r->u);
    uint64_t d = made - r->charged;
    r->charged = made;
    return unpack_take(r->u, d > SIZE_MAX ? SIZE_MAX : (size_t)d);
}

/* The content of one entry as read so far. */
struct content {
    unsigned char *buf;
    size_t len, cap;
    bool end;
};

static void
keep(struct content *c, size_t at, const void *b, size_t n)
{
    if (n == 0)
        return;
    if (c->cap - c->len < n) {
        c->cap = c->len + n > c->cap * 2 ? c->len + n : c->cap * 2;
        c->buf = xrealloc(c->buf, c->cap);
    }
    if (b)
        memcpy(c->buf + at, b, n);
    else
        memset(c->buf + at, 0, n);
    c->len = at + n;
}

/* Read the entry's blocks until c holds upto bytes or the entry ends
 * (keeping them), or to its end (kept false: dropping them). 0, or
 * UNPACK_OVER, UNPACK_UNREADABLE. */
static int
read_to(struct reader *r, struct content *c, size_t upto, bool kept)
{
    while (!c->end && (!kept || c->len < upto)) {
        const void *b;
        size_t n;
        la_int64_t off;
        int rc = archive_read_data_block(r->a, &b, &n, &off);
        if (rc == ARCHIVE_EOF) {
            c->end = true;
            break;
        }
        if (rc < ARCHIVE_WARN)
            return UNPACK_UNREADABLE;
        r->blocks += n;
        if (!charge(r))
            return UNPACK_OVER;
        if (!kept)
            continue;
        /* blocks come in order; a gap before one is a hole of zeros (a
         * sparse file), made by us and charged like inflated bytes */
        if (off < 0 || (uint64_t)off < c->len)
            return UNPACK_UNREADABLE;
        uint64_t gap = (uint64_t)off - c->len;
        if (gap > 0) {
            if (gap > SIZE_MAX - n || !unpack_take(r->u, (size_t)gap))
                return UNPACK_OVER;
            keep(c, c->len, NULL, (size_t)gap);
        }
        keep(c, c->len, b, n);
    }
    return 0;
}

/* One entry to fn: its head, then all of it if fn asks; then the rest of
 * it read through where skipping would decompress unseen. 0 to go on,
 * fn's stop value, or an error. */
static int
deliver(struct reader *r, struct archive_entry *e, size_t head, unpack_item_fn *fn, void *ctx)
{
    struct unpack_item it;
    memset(&it, 0, sizeof(it));
    it.name = archive_entry_pathname(e);
    if (it.name == NULL)
        it.name = "";
    it.nlen = strlen(it.name);
    it.single = (archive_format(r->a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_RAW;
    it.dir = archive_entry_filetype(e) == AE_IFDIR;
    it.encrypted = archive_entry_is_encrypted(e) != 0;
    it.whole = true;
    unsigned type = archive_entry_filetype(e);
    struct content c = { 0 };
    if (it.encrypted || (type != AE_IFREG && type != 0)) {
        int rc = fn(&it, ctx);
        if (rc == UNPACK_WHOLE)
            rc = 0;
        /* no content for the policy, but maybe data all the same (a 7z
         * entry is a directory or a device by its attributes, whatever
         * stream it has): read through, charged, not skipped unseen */
        if (rc == 0 && !it.encrypted && !r->seeks)
            rc = read_to(r, &c, 0, false);
        return rc;
    }
    int rc = read_to(r, &c, head, true);
    if (rc == 0) {
        it.data = c.buf;
        it.len = c.end || c.len < head ? c.len : head;
        it.whole = c.end;
        rc = fn(&it, ctx);
        if (rc == UNPACK_WHOLE && !c.end) {
            rc = read_to(r, &c, SIZE_MAX, true);
            if (rc == 0) {
                it.data = c.buf;
                it.len = c.len;
                it.whole = true;
                rc = fn(&it, ctx);
            }
        }
        if (rc == UNPACK_WHOLE)
            rc = 0;
        if (rc == 0 && !r->seeks)
            rc = read_to(r, &c, 0, false);
    }
    free(c.buf);
    return rc;
}

/* Which formats make the bytes of their entries (as against storing
 * them, maybe in a compressed stream that the filters account for). */
static bool
format_packs(int format)
{
    switch (format & ARCHIVE_FORMAT_BASE_MASK) {
    case ARCHIVE_FORMAT_ZIP:
    case ARCHIVE_FORMAT_7ZIP:
    case ARCHIVE_FORMAT_RAR:
    case ARCHIVE_FORMAT_RAR_V5:
    case ARCHIVE_FORMAT_CAB:
    case ARCHIVE_FORMAT_LHA:
    case ARCHIVE_FORMAT_XAR:
    case ARCHIVE_FORMAT_ISO9660:                    /* zisofs: inflated per file */
        return true;
    default:
        return false;
    }
}

/* The entries one by one; the count, or an error. */
static int
walk(struct reader *r, size_t head, unpack_item_fn *fn, void *ctx)
{
    struct archive_entry *e;
    int count = 0, rc = 0;
    for (;;) {
        int ar = archive_read_next_header(r->a, &e);
        if (count == 0)
            r->packs = format_packs(archive_format(r->a));
        bool ok = charge(r);
        if (ar == ARCHIVE_EOF)
            break;                                  /* every entry seen */
        if (!ok)
            return UNPACK_OVER;
        if (ar < ARCHIVE_WARN) {
            if (archive_read_has_encrypted_entries(r->a) > 0)
                return UNPACK_ENCRYPTED;
            return count == 0 && archive_format(r->a) == 0 ? UNPACK_NOT_ARCHIVE
                                                           : UNPACK_UNREADABLE;
        }
        if (count == 0 && (archive_format(r->a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_RAW &&
            archive_filter_count(r->a) < 2)
            return UNPACK_NOT_ARCHIVE;              /* plain bytes: raw reads anything */
        if (archive_entry_is_metadata_encrypted(e))
            return UNPACK_ENCRYPTED;
        if (!unpack_entry(r->u, r->len))
            return UNPACK_OVER;
        if ((rc = deliver(r, e, head, fn, ctx)) != 0)
            return rc;
        if (count < INT_MAX)
            count++;
    }
    return count;
}

int
unpack_walk(const unsigned char *p, size_t n, struct unpack *u, size_t head, unpack_item_fn *fn,
            void *ctx)
{
    pthread_once(&probed, probe);
    if (!unpack_enter(u, n))
        return UNPACK_OVER;
    struct reader r = { .u = u, .len = n };
    support_fn *only = NULL;
    int rc = 0;
    if (n >= 4 && memcmp(p, "PK\x03\x04", 4) == 0) {
        only = archive_read_support_format_zip_seekable;
        r.seeks = true;
        rc = zip_directory_check(p, n, u);
    } else if (n >= 6 && memcmp(p, "7z\xbc\xaf\x27\x1c", 6) == 0) {
        only = archive_read_support_format_7zip;
        rc = sevenzip_header_check(p, n, u);
    } else if (n >= 4 && memcmp(p, "xar!", 4) == 0) {
        only = archive_read_support_format_xar;
        rc = xar_toc_check(p, n, u);
    }
    if (rc == 0 && (r.a = archive_read_new()) == NULL)
        fatal("unpack: libarchive: out of memory");
    if (rc == 0 && only) {
        only(r.a);
    } else if (rc == 0) {
        for (size_t i = 0; i < NFILTERS; i++)
            if (built_in[i])
                filters[i](r.a);
        for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
            formats[i](r.a);
    }
    if (rc == 0)
        rc = archive_read_open_memory(r.a, p, n) == ARCHIVE_OK ? walk(&r, head, fn, ctx)
                                                              : UNPACK_NOT_ARCHIVE;
    if (r.a)
        archive_read_free(r.a);
    unpack_leave(u);
    return rc;
}
