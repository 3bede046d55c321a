/* Fuzz target: the LIST pattern matcher (mailstore/imap_match.c), checked
 * against the textbook definition written as a memoised recursion, and
 * against its bound of (|pattern| + 1) x (|name| + 1) steps. The input is
 * a pattern and a name separated by a NUL byte; when the first byte is
 * even both are mapped onto "ab.*%" so the wildcards and the delimiter
 * meet often. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../mailstore/imap_private.h"

#define MAXLEN 64

static const char *rp, *rn;
static signed char memo[MAXLEN + 1][MAXLEN + 1];

static bool
ref(size_t pi, size_t ni)
{
    if (memo[pi][ni] >= 0)
        return memo[pi][ni];
    bool r;
    char p = rp[pi], c = rn[ni];
    if (p == '\0')
        r = c == '\0';
    else if (p == '*')
        r = ref(pi + 1, ni) || (c != '\0' && ref(pi, ni + 1));
    else if (p == '%')
        r = ref(pi + 1, ni) || (c != '\0' && c != '.' && ref(pi, ni + 1));
    else
        r = c != '\0' && c == p && ref(pi + 1, ni + 1);
    memo[pi][ni] = r;
    return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool small = (data[0] & 1) == 0;
    data++;
    size--;
    const uint8_t *sep = memchr(data, 0, size);
    size_t pl = sep ? (size_t)(sep - data) : size;
    size_t nl = sep ? size - pl - 1 : 0;
    if (pl > MAXLEN || nl > MAXLEN)
        return 0;
    char pat[MAXLEN + 1], name[MAXLEN + 1];
    static const char alpha[] = "ab.*%";
    for (size_t i = 0; i < pl; i++)
        pat[i] = small ? alpha[data[i] % 5] : (char)data[i];
    for (size_t i = 0; i < nl; i++)
        name[i] = small ? alpha[data[pl + 1 + i] % 3] : (char)data[pl + 1 + i];
    pat[pl] = name[nl] = '\0';
    /* a NUL inside the name ends it, as in a C string */
    nl = strlen(name);
    memset(memo, -1, sizeof(memo));
    rp = pat;
    rn = name;
    bool want = ref(0, 0);
    size_t steps;
    bool got = imap_match(pat, name, &steps);
    if (got != want)
        __builtin_trap();
    if (steps > (pl + 1) * (nl + 1))
        __builtin_trap();
    return 0;
}
