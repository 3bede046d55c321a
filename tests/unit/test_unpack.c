/* Unit tests: archives read by libarchive (filters/unpack_walk.c) under
 * the message's archive budget (filters/unpack.c): entries read as far as
 * asked, a zip directory that disagrees with its entries refused before
 * anything is inflated, each limit (bytes, entries, depth, ratio) reached,
 * never passed, across several archives and through a compressed tar; no
 * external program run and no file opened whatever the bytes say.
 * One room though long: every archive case builds its own bytes here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <cmocka.h>
#include "../../filters/filters.h"

/* ------------------------------------------------- building archives */

struct zb { unsigned char *p; size_t n, cap; };

static void
put(struct zb *b, const void *d, size_t n)
{
    if (n == 0)
        return;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void
put16(struct zb *b, unsigned v)
{
    unsigned char x[2] = { (unsigned char)v, (unsigned char)(v >> 8) };
    put(b, x, 2);
}

static void
put32(struct zb *b, uint32_t v)
{
    unsigned char x[4] = { (unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24) };
    put(b, x, 4);
}

struct ent {
    const char *name;
    const unsigned char *data;      /* the content */
    size_t len;
    bool store;
    size_t at;                      /* same_as: share entry at's data (a bomb's trick) */
    bool same;
};

static unsigned char *
deflate_raw(const unsigned char *d, size_t n, size_t *out_n)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, n);
    unsigned char *o = malloc(cap);
    zs.next_in = (unsigned char *)d;
    zs.avail_in = (uInt)n;
    zs.next_out = o;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *out_n = cap - zs.avail_out;
    deflateEnd(&zs);
    return o;
}

/* A zip archive of the entries; *n_r its size. */
static unsigned char *
zip_of(const struct ent *e, size_t ne, size_t *n_r)
{
    struct zb loc = { 0 }, cd = { 0 };
    size_t *off = calloc(ne, sizeof(size_t)), *clen = calloc(ne, sizeof(size_t));
    for (size_t i = 0; i < ne; i++) {
        size_t src = e[i].same ? e[i].at : i;
        size_t cn = e[src].len;
        unsigned char *c = NULL;
        if (!e[src].store)
            c = deflate_raw(e[src].data, e[src].len, &cn);
        if (e[i].same) {
            off[i] = off[src];
        } else {
            off[i] = loc.n;
            put32(&loc, 0x04034b50);
            put16(&loc, 20);
            put16(&loc, 0);
            put16(&loc, e[i].store ? 0 : 8);
            put32(&loc, 0);
            put32(&loc, (uint32_t)crc32(0, e[i].data, (uInt)e[i].len));
            put32(&loc, (uint32_t)cn);
            put32(&loc, (uint32_t)e[i].len);
            put16(&loc, (unsigned)strlen(e[i].name));
            put16(&loc, 0);
            put(&loc, e[i].name, strlen(e[i].name));
            put(&loc, c ? c : e[i].data, cn);
        }
        clen[i] = cn;
        put32(&cd, 0x02014b50);
        put16(&cd, 20);
        put16(&cd, 20);
        put16(&cd, 0);
        put16(&cd, e[src].store ? 0 : 8);
        put32(&cd, 0);
        put32(&cd, (uint32_t)crc32(0, e[src].data, (uInt)e[src].len));
        put32(&cd, (uint32_t)clen[i]);
        put32(&cd, (uint32_t)e[src].len);
        put16(&cd, (unsigned)strlen(e[i].name));
        put16(&cd, 0);
        put16(&cd, 0);
        put16(&cd, 0);
        put16(&cd, 0);
        put32(&cd, 0);
        put32(&cd, (uint32_t)off[i]);
        put(&cd, e[i].name, strlen(e[i].name));
        free(c);
    }
    struct zb z = { 0 };
    put(&z, loc.p, loc.n);
    put(&z, cd.p, cd.n);
    put32(&z, 0x06054b50);
    put16(&z, 0);
    put16(&z, 0);
    put16(&z, (unsigned)ne);
    put16(&z, (unsigned)ne);
    put32(&z, (uint32_t)cd.n);
    put32(&z, (uint32_t)loc.n);
    put16(&z, 0);
    free(loc.p);
    free(cd.p);
    free(off);
    free(clen);
    *n_r = z.n;
    return z.p;
}


/* A tar of one file, its content n bytes of d; gzipped when gz. */
static unsigned char *
tar_of(const char *name, const unsigned char *d, size_t n, bool gz, size_t *n_r)
{
    size_t body = (n + 511) / 512 * 512, len = 512 + body + 1024;
    unsigned char *t = calloc(1, len);
    memcpy(t, name, strlen(name));
    memcpy(t + 100, "0000644", 7);
    memcpy(t + 108, "0000000", 7);
    memcpy(t + 116, "0000000", 7);
    snprintf((char *)t + 124, 12, "%011zo", n);
    memcpy(t + 136, "00000000000", 11);
    t[156] = '0';
    memcpy(t + 257, "ustar\0" "00", 8);
    memset(t + 148, ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < 512; i++)
        sum += t[i];
    snprintf((char *)t + 148, 8, "%06o", sum);
    if (n)
        memcpy(t + 512, d, n);
    if (!gz) {
        *n_r = len;
        return t;
    }
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, len);
    unsigned char *o = malloc(cap);
    zs.next_in = t;
    zs.avail_in = (uInt)len;
    zs.next_out = o;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *n_r = cap - zs.avail_out;
    deflateEnd(&zs);
    free(t);
    return o;
}

/* ------------------------------------------------------------ walking */

struct seen {
    unsigned calls, wholes;
    size_t bytes;                   /* of all data handed over */
    bool want_whole, nested;
    struct unpack *u;
    int nested_rc;
    char last[64];                  /* the last name */
    bool single, encrypted;
};

static int
collect(const struct unpack_item *it, void *ctx)
{
    struct seen *s = ctx;
    s->calls++;
    s->wholes += it->whole;
    s->bytes += it->len;
    s->single |= it->single;
    s->encrypted |= it->encrypted;
    snprintf(s->last, sizeof(s->last), "%.*s", (int)it->nlen, it->name);
    if (it->dir)
        return 0;
    if (s->want_whole && !it->whole)
        return UNPACK_WHOLE;
    if (s->nested && it->whole && it->len >= 4 && memcmp(it->data, "PK\x03\x04", 4) == 0) {
        struct seen inner = { .want_whole = true, .nested = true, .u = s->u };
        s->nested_rc = unpack_walk(it->data, it->len, s->u, 16, collect, &inner);
        s->calls += inner.calls;
        if (s->nested_rc < 0)
            return 1;
    }
    return 0;
}

static void
test_entries_read_as_far_as_asked(void **state)
{
    (void)state;
    unsigned char text[5000];
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = (unsigned char)("abcdefghij"[i % 10] + (i / 1000));
    struct ent e[] = { { "a.txt", text, sizeof(text), false, 0, false },
                       { "b.bin", text, 100, true, 0, false },
                       { "dir/", NULL, 0, true, 0, false } };
    size_t n;
    unsigned char *z = zip_of(e, 3, &n);
    struct unpack u;
    unpack_init(&u, NULL, NULL);
    struct seen s = { 0 };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), 3);
    assert_int_equal(s.calls, 3);
    assert_int_equal(s.bytes, 64 + 64 + 0);         /* the heads only */
    /* what libarchive made is charged whole: each entry in one block */
    assert_true(u.bytes == sizeof(text) + 100 && u.entries == 3 && u.depth == 0);
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), 3);
    assert_int_equal(s.calls, 5);                   /* a.txt and b.bin again, whole */
    assert_int_equal(s.bytes, 64 + sizeof(text) + 64 + 100 + 0);
    assert_int_equal(u.bytes, sizeof(text) + 100);
    assert_null(u.why);
    free(z);
    /* a tar in gzip, and a lone gzipped file: one entry, named by the caller */
    unsigned char *t = tar_of("docs/readme.txt", text, sizeof(text), true, &n);
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(t, n, &u, 64, collect, &s), 1);
    assert_string_equal(s.last, "docs/readme.txt");
    assert_int_equal(s.bytes, 64 + sizeof(text));
    assert_true(u.bytes >= 512 + sizeof(text) && u.bytes <= 512 + 5120 + 1024);
    assert_false(s.single);
    free(t);
    t = tar_of("x", text, sizeof(text), false, &n);     /* its tar header: plain bytes */
    unsigned char *g = tar_of("y", t + 512, 100, true, &n);
    free(t);
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ 0 };
    /* the gzip of a tar is a tar; of other bytes, a single entry */
    assert_int_equal(unpack_walk(g, n, &u, 64, collect, &s), 1);
    free(g);
}

static void
test_zip_directory_must_agree_with_the_entries(void **state)
{
    (void)state;
    size_t big = 4u << 20;
    unsigned char *zeros = calloc(1, big);
    struct ent e[300];
    char names[300][16];
    for (size_t i = 0; i < 300; i++) {
        snprintf(names[i], sizeof(names[i]), "f%03zu.txt", i);
        e[i] = (struct ent){ names[i], zeros, big, false, 0, i > 0 };
    }
    size_t n;
    unsigned char *z = zip_of(e, 300, &n);
    struct unpack u;
    unpack_init(&u, NULL, NULL);
    struct seen s = { .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_BROKEN);
    assert_int_equal(s.calls, 0);
    assert_int_equal(u.bytes, 0);
    free(z);
    /* two names for one local header: libarchive alone would list one */
    struct ent two[] = { { "a.txt", (const unsigned char *)"hello", 5, true, 0, false },
                         { "run.js", NULL, 0, true, 0, true } };
    z = zip_of(two, 2, &n);
    unpack_init(&u, NULL, NULL);
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_BROKEN);
    free(z);
    /* one entry alone is fine; named otherwise in the directory, it is not */
    z = zip_of(e, 1, &n);
    struct seen heads = { 0 };
    unpack_init(&u, NULL, NULL);
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &heads), 1);
    assert_string_equal(heads.last, "f000.txt");
    size_t cdname = n - 22 - strlen(e[0].name);
    z[cdname] = 'g';
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_BROKEN);
    z[cdname] = 'f';
    /* a record pointing into the directory */
    size_t cd = n - 22 - 46 - strlen(e[0].name);
    z[cdname - 4] = (unsigned char)cd;
    z[cdname - 3] = (unsigned char)(cd >> 8);
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_BROKEN);
    static const char junk[] = "PK\x03\x04 not a zip at all, no end";
    assert_int_equal(unpack_walk((const unsigned char *)junk, sizeof(junk) - 1, &u, 1024, collect,
                                 &s), UNPACK_NOT_ARCHIVE);
    static const char text[] = "plain words, no archive format at all\n";
    assert_int_equal(unpack_walk((const unsigned char *)text, sizeof(text) - 1, &u, 1024,
                                 collect, &s), UNPACK_NOT_ARCHIVE);
    free(z);
    free(zeros);
}

static void
put64(struct zb *b, uint64_t v)
{
    put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
}

/* The directory checked is the one libarchive reads: all of its records,
 * not only as many as the end record counts, and a Zip64 end record that
 * libarchive's seekable reader would not take (two volumes) is not taken
 * here either, else the records before it would go unchecked. */
static void
test_zip_directory_checked_is_the_one_libarchive_reads(void **state)
{
    (void)state;
    struct ent e[] = { { "a.txt", (const unsigned char *)"hello", 5, true, 0, false },
                       { "b.txt", (const unsigned char *)"hello", 5, true, 0, false } };
    size_t n;
    unsigned char *z = zip_of(e, 2, &n);
    struct unpack u;
    struct seen s = { 0 };
    unpack_init(&u, NULL, NULL);
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), 2);
    z[n - 22 + 8] = z[n - 22 + 10] = 1;             /* the end record counts one */
    s = (struct seen){ 0 };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_BROKEN);
    assert_int_equal(s.calls, 0);
    free(z);
    /* [local a.txt][record b.exe -> a.txt's header][record a.txt][Zip64 end
     * record: 1 record, a.txt's][locator: 2 volumes][end: 2 records] */
    z = zip_of(e, 1, &n);
    size_t lh = n - 22 - 46 - 5;                    /* where the record starts */
    struct zb b = { 0 };
    put(&b, z, lh);
    put(&b, z + lh, 46);
    put(&b, "b.exe", 5);
    size_t good = b.n;
    put(&b, z + lh, 46 + 5);
    size_t z64 = b.n;
    put32(&b, 0x06064b50);
    put64(&b, 44);
    put16(&b, 45);
    put16(&b, 45);
    put32(&b, 0);
    put32(&b, 0);
    put64(&b, 1);
    put64(&b, 1);
    put64(&b, 46 + 5);
    put64(&b, good);
    put32(&b, 0x07064b50);
    put32(&b, 0);
    put64(&b, z64);
    put32(&b, 2);
    size_t eocd = b.n;
    put32(&b, 0x06054b50);
    put16(&b, 0);
    put16(&b, 0);
    put16(&b, 2);
    put16(&b, 2);
    put32(&b, (uint32_t)(eocd - lh));               /* to the end record: libarchive's walk */
    put32(&b, (uint32_t)lh);
    put16(&b, 0);
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ 0 };
    assert_int_equal(unpack_walk(b.p, b.n, &u, 64, collect, &s), UNPACK_BROKEN);
    assert_int_equal(s.calls, 0);
    free(b.p);
    free(z);
}

static void
test_bytes_and_ratio_limits_are_reached_never_passed(void **state)
{
    (void)state;
    size_t big = 3u << 20;
    unsigned char *zeros = calloc(1, big);
    struct ent e[] = { { "zeros.bin", zeros, big, false, 0, false } };
    size_t n;
    unsigned char *z = zip_of(e, 1, &n);
    struct unpack_limits lim = unpack_default_limits;
    lim.bytes = 1u << 20;
    lim.ratio = 0;
    struct unpack u;
    unpack_init(&u, &lim, NULL);
    struct seen s = { .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "bytes inflated");
    assert_int_equal(u.bytes, lim.bytes);           /* reached exactly */
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_OVER);  /* and it stays spent */
    assert_int_equal(u.bytes, lim.bytes);
    /* 3 MB of zeros deflate about 1000:1: over the ratio once past its floor */
    unpack_init(&u, NULL, NULL);
    assert_int_equal(unpack_walk(z, n, &u, 1024, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "compression ratio");
    assert_true(u.bytes > UNPACK_RATIO_FLOOR && u.bytes <= UNPACK_RATIO_FLOOR + (256u << 10));
    free(z);
    /* the same through gzip, even when only the head is asked for: the tar
     * is read through, and what gzip makes is charged */
    unsigned char *t = tar_of("zeros.bin", zeros, big, true, &n);
    unpack_init(&u, &lim, NULL);
    s = (struct seen){ 0 };
    assert_int_equal(unpack_walk(t, n, &u, 1024, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "bytes inflated");
    assert_int_equal(u.bytes, lim.bytes);
    unpack_init(&u, NULL, NULL);
    assert_int_equal(unpack_walk(t, n, &u, 1024, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "compression ratio");
    free(t);
    free(zeros);
}

static void
test_entries_and_depth_are_counted_per_message(void **state)
{
    (void)state;
    struct ent *e = calloc(6000, sizeof(*e));
    char (*names)[16] = calloc(6000, 16);
    for (size_t i = 0; i < 6000; i++) {
        snprintf(names[i], 16, "%05zu.txt", i);
        e[i] = (struct ent){ names[i], (const unsigned char *)"x", 1, true, 0, false };
    }
    size_t n;
    unsigned char *z = zip_of(e, 6000, &n);
    struct unpack u;
    unpack_init(&u, NULL, NULL);
    struct seen s = { 0 };
    assert_int_equal(unpack_walk(z, n, &u, 16, collect, &s), 6000);
    assert_int_equal(unpack_walk(z, n, &u, 16, collect, &s), UNPACK_OVER);  /* a second attachment */
    assert_string_equal(u.why, "entries");
    assert_int_equal(s.calls, 6000);                /* refused before its first entry */
    free(z);
    free(e);
    free(names);
    /* archives inside archives: the fifth level is not opened */
    struct ent leaf = { "readme.txt", (const unsigned char *)"harmless", 8, false, 0, false };
    z = zip_of(&leaf, 1, &n);
    for (int level = 0; level < 5; level++) {
        struct ent outer = { "inner.zip", z, n, false, 0, false };
        size_t n2;
        unsigned char *z2 = zip_of(&outer, 1, &n2);
        free(z);
        z = z2;
        n = n2;
    }
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ .want_whole = true, .nested = true, .u = &u };
    assert_int_equal(unpack_walk(z, n, &u, 16, collect, &s), 1);
    assert_string_equal(u.why, "nesting depth");
    assert_int_equal(u.depth, 0);
    assert_int_equal(u.entries, 4);                 /* one per level opened */
    free(z);
}

/* ------------------------------------------------ 7z and xar headers */

/* 7z's NUMBER (see unpack_walk.c). */
static void
put_num(struct zb *b, uint64_t v)
{
    unsigned char first = 0, mask = 0x80, rest[8];
    int i;
    for (i = 0; i < 8; i++, mask >>= 1) {
        if (v < (uint64_t)1 << (7 * (i + 1))) {
            first |= (unsigned char)(v >> (8 * i));
            break;
        }
        first |= mask;
    }
    for (int k = 0; k < i; k++)
        rest[k] = (unsigned char)(v >> (8 * k));
    put(b, &first, 1);
    put(b, rest, (size_t)i);
}

static void
put_byte(struct zb *b, unsigned v)
{
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}

/* The description of one pack stream of `packed` bytes at pos decoded by
 * one coder (id, props) to `size` bytes: a 7z header's streams. */
static void
put_streams(struct zb *b, uint64_t pos, uint64_t packed, const char *id, size_t idlen,
            const unsigned char *props, size_t plen, uint64_t size)
{
    put_byte(b, 0x06);                              /* PackInfo */
    put_num(b, pos);
    put_num(b, 1);
    put_byte(b, 0x09);
    put_num(b, packed);
    put_byte(b, 0x00);
    put_byte(b, 0x07);                              /* UnpackInfo */
    put_byte(b, 0x0B);
    put_num(b, 1);
    put_byte(b, 0x00);
    put_num(b, 1);                                  /* one coder */
    put_byte(b, (unsigned)idlen | (plen ? 0x20 : 0));
    put(b, id, idlen);
    if (plen) {
        put_num(b, plen);
        put(b, props, plen);
    }
    put_byte(b, 0x0C);
    put_num(b, size);
    put_byte(b, 0x00);
}

static const char DEFLATE_ID[] = "\x04\x01\x08", COPY_ID[] = "\x00";

/* A 7z of one file, its content stored (the Copy method), whose header is
 * encoded: deflated (a method libarchive decodes with zlib), `filler` zero
 * bytes after it in the stream (a bomb's padding), declaring it makes
 * `declared` bytes (0: what it really makes). */
static unsigned char *
sevenz_of(const char *name, const unsigned char *d, size_t n, size_t filler, uint64_t declared,
          size_t *n_r)
{
    struct zb h = { 0 };                            /* the header, plain */
    put_byte(&h, 0x01);
    put_byte(&h, 0x04);                             /* MainStreamsInfo */
    put_streams(&h, 0, n, COPY_ID, 1, NULL, 0, n);
    put_byte(&h, 0x08);                             /* SubStreamsInfo: one stream */
    put_byte(&h, 0x00);
    put_byte(&h, 0x00);
    put_byte(&h, 0x05);                             /* FilesInfo */
    put_num(&h, 1);
    put_byte(&h, 0x11);                             /* the name, UTF-16LE */
    put_num(&h, 1 + 2 * (strlen(name) + 1));
    put_byte(&h, 0x00);
    for (size_t i = 0; i <= strlen(name); i++) {
        put_byte(&h, (unsigned char)name[i]);
        put_byte(&h, 0);
    }
    put_byte(&h, 0x00);
    put_byte(&h, 0x00);
    size_t made = h.n + filler;
    unsigned char *plain = calloc(1, made);
    memcpy(plain, h.p, h.n);
    size_t hp;
    unsigned char *packed = deflate_raw(plain, made, &hp);
    free(plain);
    free(h.p);
    struct zb e = { 0 };                            /* the next header: encoded */
    put_byte(&e, 0x17);
    put_streams(&e, n, hp, DEFLATE_ID, 3, NULL, 0, declared ? declared : made);
    put_byte(&e, 0x00);
    struct zb z = { 0 };
    unsigned char sig[32] = { '7', 'z', 0xbc, 0xaf, 0x27, 0x1c, 0, 4 };
    for (int k = 0; k < 8; k++) {
        sig[12 + k] = (unsigned char)((uint64_t)(n + hp) >> (8 * k));
        sig[20 + k] = (unsigned char)((uint64_t)e.n >> (8 * k));
    }
    uint32_t crc = (uint32_t)crc32(0, e.p, (uInt)e.n);
    for (int k = 0; k < 4; k++)
        sig[28 + k] = (unsigned char)(crc >> (8 * k));
    crc = (uint32_t)crc32(0, sig + 12, 20);
    for (int k = 0; k < 4; k++)
        sig[8 + k] = (unsigned char)(crc >> (8 * k));
    put(&z, sig, 32);
    put(&z, d, n);
    put(&z, packed, hp);
    put(&z, e.p, e.n);
    free(packed);
    free(e.p);
    *n_r = z.n;
    return z.p;
}

static void
put_be(struct zb *b, uint64_t v, int bytes)
{
    while (bytes-- > 0)
        put_byte(b, (unsigned)(v >> (8 * bytes)));
}

/* A xar of `files` files, each "hello" (the heap's 5 bytes), its table of
 * contents padded with `pad` spaces, declaring it makes `declared` bytes
 * (0: what it really makes). */
static unsigned char *
xar_of(size_t files, size_t pad, uint64_t declared, size_t *n_r)
{
    struct zb t = { 0 };
    static const char head[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xar><toc>";
    put(&t, head, strlen(head));
    for (size_t i = 0; i < files; i++) {
        char f[300];
        int len = snprintf(f, sizeof(f), "<file id=\"%zu\"><data><length>5</length><offset>0"
                           "</offset><size>5</size><encoding style=\"application/octet-stream\"/>"
                           "</data><name>f%zu.txt</name><type>file</type></file>", i + 1, i);
        put(&t, f, (size_t)len);
    }
    for (size_t i = 0; i < pad; i++)
        put_byte(&t, ' ');
    put(&t, "</toc></xar>\n", 13);
    uLongf cn = compressBound((uLong)t.n);
    unsigned char *c = malloc(cn);
    assert_int_equal(compress2(c, &cn, t.p, (uLong)t.n, 9), Z_OK);
    struct zb x = { 0 };
    put(&x, "xar!", 4);
    put_be(&x, 28, 2);
    put_be(&x, 1, 2);
    put_be(&x, cn, 8);
    put_be(&x, declared ? declared : t.n, 8);
    put_be(&x, 0, 4);                               /* no checksum */
    put(&x, c, cn);
    put(&x, "hello", 5);
    free(c);
    free(t.p);
    *n_r = x.n;
    return x.p;
}

/* A 7z's encoded header and a xar's table of contents are decoded by
 * libarchive whole in its first call: their declared size is charged
 * before, a bomb's refused without decoding it, and a xar's table never
 * inflated past what it declares. Ordinary ones are read, their headers
 * charged. */
static void
test_7z_and_xar_headers_are_charged_before_decoding(void **state)
{
    (void)state;
    size_t n;
    struct unpack u;
    struct seen s;
    unsigned char *z = sevenz_of("a.txt", (const unsigned char *)"hello", 5, 0, 0, &n);
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), 1);
    assert_string_equal(s.last, "a.txt");
    assert_int_equal(s.bytes, 5);
    /* the header (about 40 bytes) and the content */
    assert_true(u.bytes > 5 + 20 && u.bytes < 5 + 100);
    free(z);
    /* a header deflated from 4 MB (4 KB packed), read as 4 MB: refused,
     * nothing decoded; within the budget, it is charged and read on */
    struct unpack_limits lim = unpack_default_limits;
    lim.bytes = 1u << 20;
    lim.ratio = 0;
    z = sevenz_of("a.txt", (const unsigned char *)"hello", 5, 4u << 20, 0, &n);
    assert_true(n < 8192);
    unpack_init(&u, &lim, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "bytes inflated");
    assert_int_equal(u.bytes, lim.bytes);
    assert_int_equal(s.calls, 0);
    unpack_init(&u, NULL, NULL);                    /* 1000:1 */
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "compression ratio");
    free(z);
    /* sizes no decoder could make, declared, not decoded */
    static const uint64_t huge[] = { (uint64_t)1 << 40, UINT64_MAX };
    for (size_t i = 0; i < 2; i++) {
        z = sevenz_of("a.txt", (const unsigned char *)"hello", 5, 0, huge[i], &n);
        unpack_init(&u, NULL, NULL);
        s = (struct seen){ .want_whole = true };
        assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_OVER);
        assert_string_equal(u.why, "bytes inflated");
        assert_int_equal(u.bytes, UNPACK_MAX_BYTES);
        assert_int_equal(s.calls, 0);
        free(z);
    }
    /* the encoded header cut short: unreadable, nothing charged */
    z = sevenz_of("a.txt", (const unsigned char *)"hello", 5, 0, 0, &n);
    unpack_init(&u, NULL, NULL);
    z[20] = (unsigned char)(z[20] - 4);             /* its size, less its last 4 bytes */
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_UNREADABLE);
    assert_int_equal(u.bytes, 0);
    free(z);

    /* xar: an ordinary one read, its table charged */
    z = xar_of(2, 0, 0, &n);
    unpack_init(&u, NULL, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), 2);
    assert_string_equal(s.last, "f1.txt");
    assert_true(u.bytes > 300 && u.bytes < 1000);
    free(z);
    /* a table of 4 MB (4 KB packed): refused before libarchive reads it */
    z = xar_of(1, 4u << 20, 0, &n);
    assert_true(n < 8192);
    unpack_init(&u, &lim, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "bytes inflated");
    assert_int_equal(s.calls, 0);
    free(z);
    /* the same declaring 100 bytes: inflated no further, unreadable */
    z = xar_of(1, 4u << 20, 100, &n);
    unpack_init(&u, &lim, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_UNREADABLE);
    assert_int_equal(u.bytes, 100);
    assert_int_equal(s.calls, 0);
    free(z);
    /* its files counted before the first entry, like a zip's directory */
    z = xar_of(300, 0, 0, &n);
    lim = unpack_default_limits;
    lim.entries = 100;
    unpack_init(&u, &lim, NULL);
    s = (struct seen){ .want_whole = true };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "entries");
    assert_int_equal(s.calls, 0);
    free(z);
}

/* A solid 7z (one deflated stream) of two files: "dev", `made` zero bytes
 * but a device, a fifo or a directory by its attributes (mode), then
 * "b.txt", 5 bytes; its header plain. */
static unsigned char *
sevenz_solid_of(size_t made, uint32_t mode, size_t *n_r)
{
    unsigned char *zeros = calloc(1, made + 5);
    size_t pn;
    unsigned char *packed = deflate_raw(zeros, made + 5, &pn);
    free(zeros);
    struct zb h = { 0 };
    put_byte(&h, 0x01);
    put_byte(&h, 0x04);                             /* MainStreamsInfo */
    put_streams(&h, 0, pn, DEFLATE_ID, 3, NULL, 0, made + 5);
    put_byte(&h, 0x08);                             /* SubStreamsInfo: 2 files */
    put_byte(&h, 0x0D);
    put_num(&h, 2);
    put_byte(&h, 0x09);
    put_num(&h, made);
    put_byte(&h, 0x00);
    put_byte(&h, 0x00);
    put_byte(&h, 0x05);                             /* FilesInfo */
    put_num(&h, 2);
    put_byte(&h, 0x11);
    put_num(&h, 1 + 2 * 4 + 2 * 6);
    put_byte(&h, 0x00);
    static const char names[] = "dev\0b.txt";
    for (size_t i = 0; i < sizeof(names); i++) {
        put_byte(&h, (unsigned char)names[i]);
        put_byte(&h, 0);
    }
    put_byte(&h, 0x15);                             /* attributes: the mode above */
    put_num(&h, 10);
    put_byte(&h, 1);
    put_byte(&h, 0);
    put32(&h, 0x8000u | mode << 16);
    put32(&h, 0x8000u | 0100644u << 16);
    put_byte(&h, 0x00);
    put_byte(&h, 0x00);
    unsigned char sig[32] = { '7', 'z', 0xbc, 0xaf, 0x27, 0x1c, 0, 4 };
    for (int k = 0; k < 8; k++) {
        sig[12 + k] = (unsigned char)((uint64_t)pn >> (8 * k));
        sig[20 + k] = (unsigned char)((uint64_t)h.n >> (8 * k));
    }
    uint32_t crc = (uint32_t)crc32(0, h.p, (uInt)h.n);
    for (int k = 0; k < 4; k++)
        sig[28 + k] = (unsigned char)(crc >> (8 * k));
    crc = (uint32_t)crc32(0, sig + 12, 20);
    for (int k = 0; k < 4; k++)
        sig[8 + k] = (unsigned char)(crc >> (8 * k));
    struct zb z = { 0 };
    put(&z, sig, 32);
    put(&z, packed, pn);
    put(&z, h.p, h.n);
    free(packed);
    free(h.p);
    *n_r = z.n;
    return z.p;
}

/* An entry with no content for the policy (a device, a fifo, a directory)
 * may still hold data in a 7z: read through and charged, not skipped by
 * libarchive out of the budget's sight when the next entry is read. */
static void
test_data_of_entries_that_are_not_files_is_charged(void **state)
{
    (void)state;
    static const uint32_t modes[] = { 0020644, 0010644, 0040755 };
    struct unpack_limits lim = unpack_default_limits;
    lim.bytes = 1u << 20;
    lim.ratio = 0;
    for (size_t i = 0; i < 3; i++) {
        size_t n;
        unsigned char *z = sevenz_solid_of(4u << 20, modes[i], &n);
        struct unpack u;
        unpack_init(&u, &lim, NULL);
        struct seen s = { 0 };
        assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), UNPACK_OVER);
        assert_string_equal(u.why, "bytes inflated");
        assert_string_equal(s.last, "dev");
        free(z);
    }
    /* with no data to hide, a directory is read on as before */
    size_t n;
    unsigned char *z = sevenz_solid_of(0, 0040755, &n);
    struct unpack u;
    unpack_init(&u, &lim, NULL);
    struct seen s = { 0 };
    assert_int_equal(unpack_walk(z, n, &u, 64, collect, &s), 2);
    assert_string_equal(s.last, "b.txt");
    free(z);
}

/* An iso9660 whose file is zisofs-compressed (bsdtar writes one, 8 MB in
 * 380 KB): what libarchive inflates is charged like any format that
 * compresses. */
static void
test_zisofs_in_an_iso_is_charged(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-unpack-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[512], path[256];
    snprintf(path, sizeof(path), "%s/as.bin", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    static char as[64 << 10];
    memset(as, 'A', sizeof(as));
    for (int i = 0; i < 128; i++)                   /* 8 MB ("A"s: bsdtar's zisofs */
        assert_int_equal(fwrite(as, 1, sizeof(as), f), sizeof(as));  /* keeps 32 KB of zeros) */
    fclose(f);
    snprintf(cmd, sizeof(cmd), "cd %s && /usr/bin/bsdtar --format iso9660 --options zisofs "
             "-cf z.iso as.bin", dir);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof(path), "%s/z.iso", dir);
    f = fopen(path, "r");
    assert_non_null(f);
    unsigned char *iso = malloc(1 << 20);
    size_t n = fread(iso, 1, 1 << 20, f);
    fclose(f);
    assert_true(n > 0 && n < (1 << 20));
    struct unpack_limits lim = unpack_default_limits;
    lim.bytes = 4u << 20;
    lim.ratio = 0;
    struct unpack u;
    unpack_init(&u, &lim, NULL);
    struct seen s = { 0 };
    assert_int_equal(unpack_walk(iso, n, &u, 64, collect, &s), UNPACK_OVER);
    assert_string_equal(u.why, "bytes inflated");
    /* the head of as.bin was handed over, its rest read through */
    assert_string_equal(s.last, "as.bin");
    free(iso);
    unlink(path);
    snprintf(path, sizeof(path), "%s/as.bin", dir);
    unlink(path);
    rmdir(dir);
}

/* libarchive, given all its filters and formats, would run lrzip, grzip
 * and lzop as programs found on PATH, and read an mtree: a list of files
 * on disk, which its reader opens with its checkfs option. Neither may
 * happen here: a fake lrzip, grzip and lzop on PATH leave a mark when run,
 * and an mtree naming a file is no archive. */
static void
test_no_program_is_run_and_no_mtree_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-unpack-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], mark[256], file[256];
    snprintf(mark, sizeof(mark), "%s/ran", dir);
    static const char *const progs[] = { "lrzip", "grzip", "lzop" };
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, progs[i]);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "#!/bin/sh\necho %s >> %s\ncat\n", progs[i], mark);
        fclose(f);
        assert_int_equal(chmod(path, 0755), 0);
    }
    snprintf(file, sizeof(file), "%s/payload.exe", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs("MZ a program on disk\n", f);
    fclose(f);
    char *old = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
    setenv("PATH", dir, 1);
    static const unsigned char lrzip[] = "LRZI\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                         "\x00\x00\x00\x00\x00\x00\x00\x00";
    static const unsigned char grzip[] = "GRZipII\x00\x02\x04:)\x00\x00\x00\x00\x00\x00\x00";
    static const unsigned char lzop[] = "\x89LZO\x00\r\n\x1a\n\x10\x30\x20\x80\x09\x40\x01\x05"
                                        "\x03\x00\x00\x01\x00\x00\x81\xa4\x00\x00\x00\x00\x00"
                                        "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    char mtree[512];
    int mlen = snprintf(mtree, sizeof(mtree), "#mtree\n./payload.exe type=file size=21\n");
    const unsigned char *in[] = { lrzip, grzip, lzop, (const unsigned char *)mtree };
    size_t len[] = { sizeof(lrzip) - 1, sizeof(grzip) - 1, sizeof(lzop) - 1, (size_t)mlen };
    for (size_t i = 0; i < 4; i++) {
        struct unpack u;
        unpack_init(&u, NULL, NULL);
        struct seen s = { .want_whole = true };
        assert_int_equal(unpack_walk(in[i], len[i], &u, 64, collect, &s), UNPACK_NOT_ARCHIVE);
        assert_int_equal(s.calls, 0);
    }
    if (old) {
        setenv("PATH", old, 1);
        free(old);
    }
    assert_int_equal(access(mark, F_OK), -1);       /* no program ran */
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, progs[i]);
        unlink(path);
    }
    unlink(file);
    rmdir(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entries_read_as_far_as_asked),
        cmocka_unit_test(test_zip_directory_must_agree_with_the_entries),
        cmocka_unit_test(test_zip_directory_checked_is_the_one_libarchive_reads),
        cmocka_unit_test(test_bytes_and_ratio_limits_are_reached_never_passed),
        cmocka_unit_test(test_entries_and_depth_are_counted_per_message),
        cmocka_unit_test(test_no_program_is_run_and_no_mtree_read),
        cmocka_unit_test(test_7z_and_xar_headers_are_charged_before_decoding),
        cmocka_unit_test(test_zisofs_in_an_iso_is_charged),
        cmocka_unit_test(test_data_of_entries_that_are_not_files_is_charged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
