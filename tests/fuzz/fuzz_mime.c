/* Fuzz target: the MIME parse every content plugin shares (filters/mime.c,
 * GMime underneath): bounded parts, no read past what was decoded. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../filters/filters.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct filter_mime *mm = mime_parse((const char *)data, size);
    size_t n;
    const struct filter_part *p = mime_parts(mm, &n);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += strlen(p[i].content_type) + strlen(p[i].filename);
        for (size_t k = 0; p[i].data && k < p[i].len; k += 64)
            total += p[i].data[k];
    }
    if (total == (size_t)-1)
        __builtin_trap();   /* keeps the reads */
    mime_free(&mm);
    return 0;
}
