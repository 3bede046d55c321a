/* Fuzz target: Sieve scripts (mailstore/sieve_parse.c) and what they do
 * to a message (sieve_run.c). An input whose first byte is 0x01 is instead
 * a pattern and a value (split at the first NUL, mapped onto "ab*?\")
 * for the :matches wildcard matcher, checked against the textbook
 * definition as a memoised recursion and against its step bound. Any
 * other input is a script: parsed (an error must name a line), and if it
 * parses, run on a small MIME message with every limit in force, include
 * loading the input itself under any name (but those starting with 'z',
 * which do not exist). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../mailstore/sieve_private.h"

#define MAXLEN 64

static const char *rp, *rv;
static size_t rpl, rvl;
static signed char memo[MAXLEN + 2][MAXLEN + 2];

static bool
ref(size_t pi, size_t vi)
{
    if (memo[pi][vi] >= 0)
        return memo[pi][vi];
    bool r;
    if (pi == rpl) {
        r = vi == rvl;
    } else if (rp[pi] == '*') {
        r = ref(pi + 1, vi) || (vi < rvl && ref(pi, vi + 1));
    } else if (rp[pi] == '?') {
        r = vi < rvl && ref(pi + 1, vi + 1);
    } else {
        bool esc = rp[pi] == '\\' && pi + 1 < rpl;
        char c = esc ? rp[pi + 1] : rp[pi];
        r = vi < rvl && rv[vi] == c && ref(pi + (esc ? 2 : 1), vi + 1);
    }
    memo[pi][vi] = r;
    return r;
}

static const char message[] =
    "Return-Path: <bob@example.org>\r\n"
    "From: Bob <bob@example.org>, \"Team, all\" <team@example.org>\r\n"
    "To: alice@example.com (Alice), undisclosed:;\r\n"
    "Subject: [list] hello\r\n  folded\r\n"
    "List-Id: <l.example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=b\r\n"
    "\r\n"
    "--b\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "body Gr=FC=DFe\r\n"
    "--b\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "Subject: inner\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "aW5uZXIgYm9keQ==\r\n"
    "--b--\r\n";

/* include: every name is the input itself, so that including runs into
 * the loop, depth and count bounds */
static const uint8_t *script;
static size_t script_len;

static int
load(void *ctx, bool global, const char *name, char **src_r, size_t *len_r)
{
    (void)ctx;
    (void)global;
    if (name[0] == 'z') {
        errno = ENOENT;
        return -1;
    }
    *src_r = malloc(script_len + 1);
    memcpy(*src_r, script, script_len);
    *len_r = script_len;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 1 && data[0] == 0x01) {
        data++;
        size--;
        const uint8_t *sep = memchr(data, 0, size);
        size_t pl = sep ? (size_t)(sep - data) : size;
        size_t vl = sep ? size - pl - 1 : 0;
        if (pl > MAXLEN || vl > MAXLEN)
            return 0;
        static const char alpha[] = "ab*?\\";
        char pat[MAXLEN + 1], val[MAXLEN + 1];
        for (size_t i = 0; i < pl; i++)
            pat[i] = alpha[data[i] % 5];
        for (size_t i = 0; i < vl; i++)
            val[i] = alpha[data[pl + 1 + i] % 2];
        memset(memo, -1, sizeof(memo));
        rp = pat;
        rv = val;
        rpl = pl;
        rvl = vl;
        uint64_t budget = UINT64_MAX;
        int got = sieve_wildmatch(pat, pl, val, vl, false, &budget);
        if (got != (int)ref(0, 0))
            __builtin_trap();
        /* the captures: in order, inside the value */
        size_t caps[2 * MAXLEN];
        uint64_t b2 = UINT64_MAX;
        if (sieve_wildmatch_caps(pat, pl, val, vl, false, &b2, caps, 2 * MAXLEN) != got)
            __builtin_trap();
        size_t nwild = 0;
        for (size_t i = 0; i < pl; i++) {
            if (pat[i] == '\\' && i + 1 < pl)
                i++;
            else if (pat[i] == '*' || pat[i] == '?')
                nwild++;
        }
        for (size_t k = 0; got == 1 && k < nwild; k++)
            if (caps[2 * k] > caps[2 * k + 1] || caps[2 * k + 1] > vl ||
                (k > 0 && caps[2 * k] < caps[2 * k - 1]))
                __builtin_trap();
        if (UINT64_MAX - budget > 2 * (uint64_t)(pl + 1) * (vl + 1))
            __builtin_trap();
        return 0;
    }
    char err[300];
    struct sieve_script *s = sieve_parse((const char *)data, size, err, sizeof(err));
    if (s == NULL) {
        if (strncmp(err, "line ", 5) != 0)
            __builtin_trap();
        return 0;
    }
    script = data;
    script_len = size;
    struct sieve_input in = { .data = message, .len = sizeof(message) - 1,
                              .env_from = "bob@example.org", .env_to = "alice@example.com",
                              .load = load, .name = "main" };
    struct mailstore_sieve_result res;
    memset(&res, 0, sizeof(res));
    if (sieve_run(s, &in, &res, err, sizeof(err)) < 0 && strncmp(err, "line ", 5) != 0)
        __builtin_trap();
    mailstore_sieve_result_free(&res);
    sieve_free(&s);
    return 0;
}
