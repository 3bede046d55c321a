/*
 * unpack.c -- what opening the archives of one message may cost, in all.
 *
 * One budget per message, shared by all its attachments and by every
 * archive nested in one, whatever reader opens them (unpack_walk.c,
 * through libarchive): the bytes inflated, the entries listed, the
 * nesting depth, the compression ratio of each entry and of the whole,
 * and the hook's deadline. A reader enters and leaves each archive,
 * counts each entry and charges what the decompressors make as they make
 * it, block by block, so a limit is never passed, only reached: the first
 * refusal ends all unpacking for the message, and why says which limit it
 * was.
 */
#include <string.h>
#include "filters.h"

const struct unpack_limits unpack_default_limits = {
    .bytes = UNPACK_MAX_BYTES,
    .entries = UNPACK_MAX_ENTRIES,
    .depth = UNPACK_MAX_DEPTH,
    .ratio = UNPACK_MAX_RATIO,
    .ratio_floor = UNPACK_RATIO_FLOOR,
};

void
unpack_init(struct unpack *u, const struct unpack_limits *lim, struct filter_result *r)
{
    memset(u, 0, sizeof(*u));
    u->lim = lim ? *lim : unpack_default_limits;
    u->r = r;
}

static bool
refuse(struct unpack *u, const char *why)
{
    if (u->why == NULL)
        u->why = why;
    return false;
}

bool
unpack_ok(struct unpack *u)
{
    if (u->why)
        return false;
    if (filter_expired(u->r)) {
        u->expired = true;
        return refuse(u, "deadline");
    }
    return true;
}

bool
unpack_can_enter(const struct unpack *u)
{
    return u->why == NULL && u->depth < u->lim.depth;
}

bool
unpack_enter(struct unpack *u, size_t len)
{
    if (!unpack_ok(u))
        return false;
    if (u->depth >= u->lim.depth)
        return refuse(u, "nesting depth");
    if (u->depth == 0)
        u->top += len;
    u->depth++;
    u->entry_in = len;              /* what it makes before its first entry */
    u->entry_out = 0;
    return true;
}

void
unpack_leave(struct unpack *u)
{
    if (u->depth > 0)
        u->depth--;
}

bool
unpack_entries(struct unpack *u, size_t n)
{
    if (!unpack_ok(u))
        return false;
    return n <= u->lim.entries - u->entries ? true : refuse(u, "entries");
}

bool
unpack_entry(struct unpack *u, size_t within)
{
    if (!unpack_ok(u))
        return false;
    if (u->entries >= u->lim.entries)
        return refuse(u, "entries");
    u->entries++;
    u->entry_in = within;
    u->entry_out = 0;
    return true;
}

bool
unpack_take(struct unpack *u, size_t out)
{
    if (!unpack_ok(u))
        return false;
    if (out > u->lim.bytes - u->bytes) {
        u->bytes = u->lim.bytes;                    /* reached, and spent */
        return refuse(u, "bytes inflated");
    }
    u->bytes += out;
    u->entry_out += out;
    /* A high ratio is normal for a small file and a bomb's mark for a big
     * one: checked once the entry (or the whole) is past the floor. An
     * entry is made from at most the archive that holds it. */
    uint64_t ratio = u->lim.ratio;
    if (ratio && u->entry_out > u->lim.ratio_floor && u->entry_out / ratio > u->entry_in)
        return refuse(u, "compression ratio");
    if (ratio && u->bytes > u->lim.ratio_floor && u->bytes / ratio > u->top)
        return refuse(u, "compression ratio");
    return true;
}
