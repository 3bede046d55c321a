/* Fuzz target: archives read by libarchive (filters/unpack_walk.c) under
 * the message's archive budget (filters/unpack.c), nested ones opened as
 * the policy opens them (all of an entry asked for, then walked in turn),
 * the same bytes twice as two attachments of one message. What the
 * decompressors really make is counted here by wrapping zlib's inflate,
 * liblzma's lzma_code and libbz2's BZ2_bzDecompress (what gzip, xz, lzma,
 * bzip2, zip's deflate and 7z's LZMA run on), so every call libarchive
 * makes to them comes here first. The budget is never passed (bytes,
 * entries, depth), and what was really made passes it by at most what
 * libarchive makes in one call beyond the refusal (SLACK), whatever the
 * input. Names are C strings of their length; the limits are small so
 * that inputs of a few KiB reach them.
 *
 * libarchive's 7z reader sizes its tables from the counts in the header
 * (up to 100 million files, 59 bytes each) before the first entry: a
 * calloc of gigabytes whose pages stay untouched unless the header really
 * lists that many. So `make fuzz` runs this target with libFuzzer's malloc
 * limit at 8 GiB, and its RSS limit (2 GiB) still fails any input that
 * makes the memory really used. libarchive itself is not instrumented:
 * coverage guides the fuzzer through our side only. */
#include <bzlib.h>
#include <dlfcn.h>
#include <lzma.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>
#include "../../filters/filters.h"

static const struct unpack_limits lim = {
    .bytes = 128u << 10, .entries = 200, .depth = 3, .ratio = 100, .ratio_floor = 16u << 10,
};
/* The block libarchive may make before a refusal: zip inflates 256 KiB at
 * a time, and a filter reads ahead of the format; per archive opened. */
#define SLACK (1u << 20)

static uint64_t made;           /* by the decompressors, for this input */
static unsigned opened;         /* archives walked, for this input */

int
inflate(z_streamp strm, int flush)
{
    static int (*real)(z_streamp, int);
    if (real == NULL)
        real = (int (*)(z_streamp, int))dlsym(RTLD_NEXT, "inflate");
    uInt before = strm->avail_out;
    int rc = real(strm, flush);
    made += before - strm->avail_out;
    return rc;
}

lzma_ret
lzma_code(lzma_stream *strm, lzma_action action)
{
    static lzma_ret (*real)(lzma_stream *, lzma_action);
    if (real == NULL)
        real = (lzma_ret(*)(lzma_stream *, lzma_action))dlsym(RTLD_NEXT, "lzma_code");
    size_t before = strm->avail_out;
    lzma_ret rc = real(strm, action);
    made += before - strm->avail_out;
    return rc;
}

int
BZ2_bzDecompress(bz_stream *strm)
{
    static int (*real)(bz_stream *);
    if (real == NULL)
        real = (int (*)(bz_stream *))dlsym(RTLD_NEXT, "BZ2_bzDecompress");
    unsigned before = strm->avail_out;
    int rc = real(strm);
    made += before - strm->avail_out;
    return rc;
}

struct walk {
    struct unpack *u;
    bool again;                     /* the entry's whole content comes next */
};

static void open_walk(struct unpack *u, const unsigned char *p, size_t n);

static int
item(const struct unpack_item *it, void *ctx)
{
    struct walk *w = ctx;
    if (it->name == NULL || strlen(it->name) != it->nlen || (it->data == NULL && it->len > 0))
        __builtin_trap();
    if (w->u->bytes > lim.bytes || w->u->depth > lim.depth || w->u->entries > lim.entries)
        __builtin_trap();
    unsigned char sum = 0;
    for (size_t i = 0; it->data && i < it->len; i++)
        sum ^= it->data[i];
    if (sum == 0x5a && it->len == 1 && it->data[0] != 0x5a)
        __builtin_trap();           /* keeps the reads */
    if (w->again) {
        w->again = false;
        open_walk(w->u, it->data, it->len);
        return w->u->why ? 1 : 0;
    }
    if (it->dir || it->data == NULL || it->len < 4)
        return 0;
    if (!it->whole) {
        w->again = true;
        return UNPACK_WHOLE;
    }
    open_walk(w->u, it->data, it->len);
    return w->u->why ? 1 : 0;
}

static void
open_walk(struct unpack *u, const unsigned char *p, size_t n)
{
    struct walk w = { u, false };
    opened++;
    unpack_walk(p, n, u, 64, item, &w);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct unpack u;
    unpack_init(&u, &lim, NULL);
    made = 0;
    opened = 0;
    open_walk(&u, data, size);
    open_walk(&u, data, size);      /* a second attachment of the message */
    if (u.bytes > lim.bytes || u.entries > lim.entries || u.depth != 0)
        __builtin_trap();
    if (made > lim.bytes + (uint64_t)SLACK * opened)
        __builtin_trap();
    return 0;
}
