/* Fuzz target: the zip reader of the attachment policy (filters/zip.c).
 * Every entry it reports lies within the input or its own inflate buffer. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../filters/filters.h"

static const uint8_t *base;
static size_t base_len;

static int
entry(const char *name, size_t nlen, const unsigned char *data, size_t len, bool enc, void *ctx)
{
    (void)enc;
    (void)ctx;
    if ((const uint8_t *)name < base || (const uint8_t *)name + nlen > base + base_len)
        __builtin_trap();
    unsigned char sum = 0;
    for (size_t i = 0; data && i < len; i++)
        sum ^= data[i];
    if (sum == 0x5a && len == 1 && data[0] != 0x5a)
        __builtin_trap();   /* keeps the reads */
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    base = data;
    base_len = size;
    zip_walk(data, size, 1u << 20, entry, NULL);
    return 0;
}
