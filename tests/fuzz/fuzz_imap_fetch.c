/* Fuzz target: a FETCH answered (mailstore/imap_fetch.c) from a real
 * folder, as the store role answers it: the items of the first line (what
 * follows "FETCH 1 ", parsed by imap_fetch_parse.c) against the message in
 * the rest of the input, appended to a Maildir folder of its own. Sections,
 * partials, HEADER.FIELDS[.NOT], MIME, BINARY and BODYSTRUCTURE run on
 * hostile MIME; fetch_run_step answers in steps of FETCH_STEP_BYTES.
 * Checked: every literal of the answer holds the bytes it announces, and
 * the answer is bounded by its items (each at most the message, or its
 * decoded part, plus its name): what the penetration test's
 * FETCH amplification needed to stay. */
#include <ftw.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/buffer.h>
#include "../../mailstore/mailstore.h"
#include "../../mailstore/imap_private.h"
#include "../../mailstore/imap_fetch.h"

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Each "{N}\r\n" is followed by N bytes; what is around literals is text. */
static void
check_literals(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (p[i] != '{') {
            i++;
            continue;
        }
        size_t k = i + 1, v = 0;
        bool digits = false;
        while (k < n && p[k] >= '0' && p[k] <= '9' && k - i < 20) {
            v = v * 10 + (size_t)(p[k] - '0');
            digits = true;
            k++;
        }
        if (digits && k + 2 < n + 1 && k + 1 < n && p[k] == '}' && p[k + 1] == '\r' &&
            k + 2 < n && p[k + 2] == '\n') {
            if (v > n - (k + 3))
                __builtin_trap();           /* a literal longer than what follows */
            i = k + 3 + v;
            continue;
        }
        i++;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl == NULL || (size_t)(nl - data) > 2000)
        return 0;
    size_t clen = (size_t)(nl - data);
    const char *msg = (const char *)nl + 1;
    size_t mlen = size - clen - 1;

    char line[2100];
    int ln = snprintf(line, sizeof(line), "f FETCH 1 %.*s", (int)clen, (const char *)data);
    struct imap_cmd cmd;
    const char *why;
    if (imap_parse(line, (size_t)ln, &cmd, &why) < 0)
        return 0;
    struct fetch_spec fs;
    if (cmd.nargs < 2 || fetch_parse(&cmd.args[cmd.nargs - 1], &fs, &why) < 0) {
        imap_cmd_free(&cmd);
        return 0;
    }
    imap_cmd_free(&cmd);

    /* on tmpfs where there is one: the folder's fsyncs cost nothing there */
    char dir[64];
    snprintf(dir, sizeof(dir), "%s/fuzz_imap_fetch.XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (mkdtemp(dir) == NULL || mailstore_make_folder(dir) < 0)
        abort();
    struct folder_add *a = folder_add_begin(dir);
    uint32_t uid, validity;
    if (a == NULL || folder_add_data(a, msg, mlen, 0, NULL, 0, 0) < 0 ||
        folder_add_commit(a, &uid, &validity) < 0)
        abort();
    folder_add_end(&a);
    struct folder *mb = folder_open(dir, true);
    if (mb == NULL)
        abort();
    size_t *idx = malloc(sizeof(size_t));
    idx[0] = 0;
    struct fetch_run *r = fetch_run_new(&fs, idx, 1, false, mb);
    struct evbuffer *out = evbuffer_new();
    size_t steps = 0;
    while (!fetch_run_step(r, out, 1e300))
        if (++steps > 100000)
            __builtin_trap();               /* a step that makes no progress */
    fetch_run_free(&r);
    folder_close(&mb);
    folder_forget(dir, true);

    size_t n = evbuffer_get_length(out);
    /* each item: at most the message (a decoded part is no longer than
     * the part) and its name, section and structure around it */
    if (n > fs.n * (mlen + 4096) + 4096)
        __builtin_trap();
    check_literals(evbuffer_pullup(out, -1), n);
    if (getenv("FUZZ_SHOW"))                /* to look at a seed's answer */
        fwrite(evbuffer_pullup(out, -1), 1, n, stderr);
    evbuffer_free(out);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
