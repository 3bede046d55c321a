/* libFuzzer target: the PROXY v1/v2 header parser. A result must not
 * change when more bytes follow, and must never claim more than it got. */
#include <stdint.h>
#include <stdlib.h>
#include "../../gateway/gateway.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_result r;
    int n = proxy_parse(data, size, &r);
    if (n > (int)size || n > PROXY_MAX_HEADER)
        abort();
    if (n > 0) {
        /* every shorter prefix wants more input */
        for (size_t k = 0; k < (size_t)n; k++) {
            struct proxy_result r2;
            if (proxy_parse(data, k, &r2) != 0)
                abort();
        }
    }
    return 0;
}
