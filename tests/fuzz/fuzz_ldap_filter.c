/* Fuzz target: the LDAP filter of verify = "ldap" made from a hostile
 * recipient address (gateway/smtp_ldap.c): whatever the address, the
 * filter is the template's, the address inside it has no filter special
 * left unescaped and no byte outside printable ASCII, and unescaping it
 * gives the address back (RFC 4515). A buffer too small is refused. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../gateway/gateway.h"

static int
hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char addr[1100], out[3400], back[1100];
    if (size < 1 || size > 1024)
        return 0;
    size_t small = data[0];                     /* a second, small buffer */
    memcpy(addr, data + 1, size - 1);
    addr[size - 1] = '\0';
    size_t alen = strlen(addr), o = 0;
    if (smtp_ldap_filter("(mail=%s)", addr, out, sizeof(out)) != 0)
        __builtin_trap();                       /* 3 * 1023 + 8 fits */
    size_t n = strlen(out);
    if (n < 7 || memcmp(out, "(mail=", 6) != 0 || out[n - 1] != ')')
        __builtin_trap();
    for (size_t i = 6; i < n - 1; i++) {
        unsigned char ch = (unsigned char)out[i];
        if (ch < 0x20 || ch >= 0x7f || ch == '(' || ch == ')' || ch == '*')
            __builtin_trap();
        if (ch == '\\') {
            int hi = hexval(out[i + 1]), lo = hi < 0 ? -1 : hexval(out[i + 2]);
            if (hi < 0 || lo < 0)
                __builtin_trap();
            back[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            back[o++] = (char)ch;
        }
        if (o > alen)
            __builtin_trap();
    }
    if (o != alen || memcmp(back, addr, alen) != 0)
        __builtin_trap();
    /* too small: -1 and an empty string, never a cut filter */
    char tiny[256];
    int r = smtp_ldap_filter("(mail=%s)", addr, tiny, small);
    if (r == 0 && (small <= n || strcmp(tiny, out) != 0))
        __builtin_trap();
    if (r != 0 && small > n)
        __builtin_trap();
    if (r != 0 && small > 0 && tiny[0] != '\0')
        __builtin_trap();
    return 0;
}
