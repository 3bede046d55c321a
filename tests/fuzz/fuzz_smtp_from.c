/* Fuzz target: the addresses of a From field (gateway/smtp_from.c), as
 * the sender ownership check reads them from a hostile message. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../gateway/gateway.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char out[16][SMTP_ADDR_MAX + 1];
    int n = smtp_from_addrs((const char *)data, size, out, 16);
    if (n < -1 || n > 16)
        __builtin_trap();
    for (int i = 0; i < n; i++) {
        size_t len = strnlen(out[i], sizeof(out[i]));
        if (len == 0 || len > SMTP_ADDR_MAX)
            __builtin_trap();
    }
    return 0;
}
