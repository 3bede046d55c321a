/* Fuzz target: the zip reader of the attachment policy (filters/zip.c)
 * under the message's archive budget (filters/unpack.c), nested archives
 * opened as the policy opens them (all of an entry asked for when its
 * first bytes say zip). Every name it reports lies within the archive
 * being walked; the bytes inflated, counted here by wrapping zlib's
 * inflate, never pass the budget (and are what the budget was charged);
 * nor do the entries or the depth. The limits are small so that inputs
 * of a few KiB reach them. */
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>
#include "../../filters/filters.h"

static const struct unpack_limits lim = {
    .bytes = 128u << 10, .entries = 200, .depth = 3, .ratio = 100, .ratio_floor = 16u << 10,
};

static uint64_t inflated;       /* by zlib, for this input */
static size_t entries;          /* handed over, for this input */

/* Every inflate call of zip.c comes here first. */
int
inflate(z_streamp strm, int flush)
{
    static int (*real)(z_streamp, int);
    if (real == NULL)
        real = (int (*)(z_streamp, int))dlsym(RTLD_NEXT, "inflate");
    uInt before = strm->avail_out;
    int rc = real(strm, flush);
    inflated += before - strm->avail_out;
    return rc;
}

struct walk {
    struct unpack *u;
    const unsigned char *base;      /* the archive walked */
    size_t len;
    const char *again;              /* the entry asked for whole */
};

static int
entry(const char *name, size_t nlen, const unsigned char *data, size_t len, bool whole, bool enc,
      void *ctx)
{
    (void)enc;
    struct walk *w = ctx;
    const unsigned char *n = (const unsigned char *)name;
    if (n < w->base || n + nlen > w->base + w->len)
        __builtin_trap();
    if (name != w->again)
        entries++;
    w->again = NULL;
    if (w->u->bytes > lim.bytes || w->u->depth > lim.depth || w->u->entries > lim.entries)
        __builtin_trap();
    unsigned char sum = 0;
    for (size_t i = 0; data && i < len; i++)
        sum ^= data[i];
    if (sum == 0x5a && len == 1 && data[0] != 0x5a)
        __builtin_trap();   /* keeps the reads */
    if (data == NULL || len < 4 || memcmp(data, "PK\x03\x04", 4) != 0)
        return 0;
    if (!whole) {
        w->again = name;
        return ZIP_WHOLE;
    }
    struct walk inner = { w->u, data, len, NULL };
    int rc = zip_walk(data, len, w->u, 64, entry, &inner);
    return rc == ZIP_OVER ? 1 : 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct unpack u;
    unpack_init(&u, &lim, NULL);
    inflated = 0;
    entries = 0;
    struct walk w = { &u, data, size, NULL };
    zip_walk(data, size, &u, 64, entry, &w);
    /* the same archive again, as a second attachment of the message */
    zip_walk(data, size, &u, 64, entry, &w);
    if (inflated > lim.bytes || inflated != u.bytes || entries > lim.entries ||
        u.entries > lim.entries || u.depth != 0)
        __builtin_trap();
    return 0;
}
