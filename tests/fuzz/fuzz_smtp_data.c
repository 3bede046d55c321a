/* libFuzzer target: the DATA/BDAT reader. The first byte picks the mode and
 * the chunk size; the invariants are what SMTP smuggling would break: the
 * output has CRLF line endings only, and the end of DATA is only ever found
 * right after <CRLF>.<CRLF>. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../gateway/gateway.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool bdat = data[0] & 1;
    size_t step = (data[0] >> 1) + 1;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    struct smtp_data d;
    smtp_data_init(&d, bdat);
    char *out = malloc(2 * len + 4);
    size_t o = 0, off = 0;
    bool end = false;
    while (off < len && !end) {
        size_t n = len - off < step ? len - off : step;
        size_t olen, used;
        end = smtp_data_feed(&d, in + off, n, out + o, &olen, &used);
        if (olen > 2 * used + 2 || used > n)
            abort();
        o += olen;
        off += used;
    }
    if (bdat)
        o += smtp_data_finish(&d, out + o);
    if (end) {
        /* the consumed input ends with CRLF . CRLF, after a CRLF or at the start */
        if (bdat || off < 3 || memcmp(in + off - 3, ".\r\n", 3) != 0)
            abort();
        if (off > 3 && (off < 5 || memcmp(in + off - 5, "\r\n", 2) != 0))
            abort();
    }
    for (size_t i = 0; i < o; i++) {
        if (out[i] == '\r' && (i + 1 >= o || out[i + 1] != '\n'))
            abort();
        if (out[i] == '\n' && (i == 0 || out[i - 1] != '\r'))
            abort();
    }
    free(out);
    return 0;
}
