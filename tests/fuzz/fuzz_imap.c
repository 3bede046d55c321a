/* Fuzz target: the IMAP command reader and parser (mailstore/imap_parse.c)
 * and what reads the parsed arguments: sequence sets, FETCH items and
 * SEARCH keys. The input is fed in two pieces, so a command split anywhere
 * reads like a whole one. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../mailstore/imap_private.h"
#include "../../mailstore/imap_fetch.h"
#include "../../mailstore/imap_search.h"

static void
walk(const struct imap_arg *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].type == IA_LIST) {
            walk(v[i].list, v[i].nlist);
            continue;
        }
        char *s = imap_arg_str(&v[i]);
        free(s);
        struct seqset set;
        if (v[i].type == IA_ATOM && seqset_parse(v[i].s, v[i].len, 1000, &set) == 0) {
            seqset_has(&set, 7);
            seqset_free(&set);
        }
    }
}

static void
one(const char *buf, size_t len)
{
    struct imap_cmd cmd;
    const char *why;
    if (imap_parse(buf, len, &cmd, &why) < 0)
        return;
    walk(cmd.args, cmd.nargs);
    if (cmd.nargs > 0) {
        struct fetch_spec fs;
        fetch_parse(&cmd.args[cmd.nargs - 1], &fs, &why);
        struct search *s;
        bool badcs;
        if (search_parse(cmd.args, cmd.nargs, 100, 1000, &s, &why, &badcs) == 0)
            search_free(s);
    }
    imap_cmd_free(&cmd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct imap_reader r;
    imap_reader_init(&r, 4096, 8192, 16384);
    size_t split = size ? data[0] % (size + 1) : 0;
    const char *p = (const char *)data;
    size_t left = size, off = 0;
    while (left > 0) {
        size_t piece = off == 0 && split < left ? split : left;
        if (piece == 0)
            piece = left;
        size_t used;
        enum imap_read rc = imap_reader_feed(&r, p + off, piece, &used);
        if (used > piece)
            __builtin_trap();
        off += used;
        left -= used;
        if (rc == IR_COMMAND) {
            one(r.buf, r.len);
            imap_reader_reset(&r);
        } else if (rc == IR_TOO_LONG || rc == IR_BAD_LITERAL) {
            imap_reader_reset(&r);
        } else if (used == 0) {
            break;
        }
    }
    imap_reader_free(&r);
    return 0;
}
