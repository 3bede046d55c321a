/* Fuzz target: the reply lines of a next hop asked by a recipient callout
 * (gateway/smtp_verify.c), read as the callout reads them: line by line
 * from a hostile server's bytes, a reply ending at its last line. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../gateway/gateway.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    size_t left = size;
    char text[300];
    for (;;) {
        size_t used = 0;
        int code = 0;
        bool last = false;
        int r = smtp_verify_reply_line(p, left, &used, &code, &last, text, sizeof(text));
        if (r < -1 || r > 1)
            __builtin_trap();
        if (r <= 0)
            break;
        if (used == 0 || used > left || used > 2048 || p[used - 1] != '\n')
            __builtin_trap();
        if (code != -1 && (code < 100 || code > 599))
            __builtin_trap();
        size_t tl = strnlen(text, sizeof(text));
        if (tl == sizeof(text) || tl >= used)
            __builtin_trap();
        for (size_t i = 0; i < tl; i++)
            if ((unsigned char)text[i] < 32)
                __builtin_trap();
        p += used;
        left -= used;
    }
    return 0;
}
