/* libFuzzer target: the JSON writer against the JSON parser. Any bytes
 * written as a string must give valid JSON that parses back; bytes that
 * are valid UTF-8 without NUL must come back exactly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../common/util.h"

static bool
valid_utf8_no_nul(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = p[i], k, v, min;
        if (c == 0)
            return false;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { k = 2; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 3; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 4; min = 0x10000; }
        else return false;
        if (i + k > n)
            return false;
        v = c & (0xFF >> (k + 1));
        for (size_t j = 1; j < k; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return false;
            v = (v << 6) | (p[i + j] & 0x3F);
        }
        if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
            return false;
        i += k;
    }
    return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1000)            /* the parser's tokens are bounded (4 KB) */
        return 0;
    struct jbuf b = { 0 };
    jb_obj(&b);
    jb_key(&b, "k");
    jb_strn(&b, (const char *)data, size);
    jb_obj_end(&b);
    if (memchr(b.p, '<', b.len) || memchr(b.p, '>', b.len))
        __builtin_trap();       /* never markup */
    char err[200];
    struct conf_node *n = conf_parse(b.p, b.len, err, sizeof(err));
    if (n == NULL || n->child == NULL || n->child->value == NULL)
        __builtin_trap();
    if (valid_utf8_no_nul(data, size) &&
        (strlen(n->child->value) != size || memcmp(n->child->value, data, size) != 0))
        __builtin_trap();
    conf_node_free(&n);
    jb_free(&b);
    return 0;
}
