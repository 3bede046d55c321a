/* Fuzz target: header fields and the author domain as plugins read them
 * (filters/header.c) from a hostile message. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../filters/filter.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct filter_msg m = { .data = (const char *)data, .len = size };
    char dom[256];
    size_t len;
    for (size_t i = 0; i < 4; i++) {
        const char *v = filter_header(&m, "From", i, &len);
        if (v && (v < m.data || v + len > m.data + size))
            __builtin_trap();
    }
    int rc = filter_from_domain(&m, dom, sizeof(dom));
    if (rc == 0 && (dom[0] == '\0' || strlen(dom) >= sizeof(dom)))
        __builtin_trap();
    return 0;
}
