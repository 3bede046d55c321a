/*
 * imap_sort.c -- SORT and THREAD (RFC 5256).
 */
#include "store_private.h"
#include "imap_private.h"

void
cmd_sort(struct imap_ctx *x)
{
    imap_tagged(x, "BAD", "Unknown command");
}

void
cmd_thread(struct imap_ctx *x)
{
    imap_tagged(x, "BAD", "Unknown command");
}
