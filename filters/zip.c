/*
 * zip.c -- the entries of a zip archive in memory, for the attachment
 * policy: names from the central directory, and each entry's content when
 * it is stored or deflated (inflated up to a bound). A parser of hostile
 * bytes: every offset and length is checked against the buffer before it
 * is read; Zip64 and encrypted entries are listed without content.
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "filters.h"
#include "../common/common.h"

#define EOCD_MIN 22
#define CDH_MIN 46
#define LFH_MIN 30
#define MAX_ENTRIES 10000

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

static unsigned char *
inflate_raw(const unsigned char *in, size_t inlen, size_t want, size_t max, size_t *outlen)
{
    if (want == 0 || want > max)
        want = max;
    unsigned char *out = xmalloc(want ? want : 1);
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
        free(out);
        return NULL;
    }
    zs.next_in = (unsigned char *)in;
    zs.avail_in = inlen > UINT32_MAX ? UINT32_MAX : (uInt)inlen;
    zs.next_out = out;
    zs.avail_out = (uInt)want;
    int rc = inflate(&zs, Z_FINISH);
    *outlen = want - zs.avail_out;
    inflateEnd(&zs);
    if (rc != Z_STREAM_END && rc != Z_BUF_ERROR && rc != Z_OK) {
        free(out);
        return NULL;
    }
    return out;     /* possibly cut at the bound: enough to look at */
}

int
zip_walk(const unsigned char *p, size_t n, size_t max_inflate, zip_entry_fn *fn, void *ctx)
{
    if (n < EOCD_MIN || memcmp(p, "PK\x03\x04", 4) != 0)
        return -1;
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
        return -1;
    size_t count = u16(p + eocd + 10);
    size_t cd_size = u32(p + eocd + 12), cd_off = u32(p + eocd + 16);
    if (cd_off > n || cd_size > n - cd_off)
        return -1;
    size_t off = cd_off, end = cd_off + cd_size, seen = 0;
    while (seen < count && seen < MAX_ENTRIES && off + CDH_MIN <= end) {
        const unsigned char *h = p + off;
        if (memcmp(h, "PK\x01\x02", 4) != 0)
            break;
        unsigned flags = u16(h + 8), method = u16(h + 10);
        uint32_t csize = u32(h + 20), usize = u32(h + 24);
        size_t nlen = u16(h + 28), elen = u16(h + 30), clen = u16(h + 32);
        uint32_t lfh = u32(h + 42);
        if (off + CDH_MIN + nlen > end)
            break;
        const char *name = (const char *)h + CDH_MIN;
        const unsigned char *data = NULL;
        unsigned char *owned = NULL;
        size_t dlen = 0;
        bool encrypted = (flags & 1) != 0;
        if (!encrypted && csize != 0xFFFFFFFFu && lfh <= n && n - lfh >= LFH_MIN &&
            memcmp(p + lfh, "PK\x03\x04", 4) == 0) {
            size_t start = (size_t)lfh + LFH_MIN + u16(p + lfh + 26) + u16(p + lfh + 28);
            if (start <= n && csize <= n - start) {
                if (method == 0) {
                    data = p + start;
                    dlen = csize;
                } else if (method == 8) {
                    owned = inflate_raw(p + start, csize, usize, max_inflate, &dlen);
                    data = owned;
                }
            }
        }
        int rc = fn(name, nlen, data, dlen, encrypted, ctx);
        free(owned);
        if (rc != 0)
            return rc;
        seen++;
        off += CDH_MIN + nlen + elen + clen;
    }
    return (int)seen;
}
