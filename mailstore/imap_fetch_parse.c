/*
 * imap_fetch_parse.c -- the data items of a FETCH (RFC 3501 6.4.5, RFC
 * 3516, RFC 7162) parsed from the command's arguments into a fetch_spec:
 * macros expanded, sections and partials checked, an item named twice
 * answered once. No I/O; imap_fetch.c answers the items.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "../common/util.h"
#include "imap_private.h"
#include "imap_fetch.h"

static int
parse_section(struct fetch_item *it, const char *s, size_t len, const char **why)
{
    /* s: from after "BODY[" or "BODY.PEEK[" to the end of the atom */
    const char *close = memchr(s, ']', len);
    if (close == NULL) {
        *why = "missing ] in a section";
        return -1;
    }
    size_t sl = (size_t)(close - s);
    if (sl >= sizeof(it->section)) {
        *why = "section too long";
        return -1;
    }
    memcpy(it->section, s, sl);
    it->section[sl] = '\0';
    for (char *p = it->section; *p && *p != '('; p++)
        *p = (char)toupper((unsigned char)*p);
    const char *rest = close + 1;
    size_t rl = len - sl - 1;
    if (rl > 0) {
        unsigned long long a, b;
        char tail;
        char buf[64];
        if (rl >= sizeof(buf)) {
            *why = "bad partial";
            return -1;
        }
        memcpy(buf, rest, rl);
        buf[rl] = '\0';
        if (sscanf(buf, "<%llu.%llu%c", &a, &b, &tail) == 3 && tail == '>' && b > 0) {
            it->partial = true;
            it->p_off = a;
            it->p_len = b;
        } else {
            *why = "bad partial <offset.length>";
            return -1;
        }
    }
    return 0;
}

static int
add_item(struct fetch_spec *fs, const struct imap_arg *a, const char **why)
{
    if (a->type != IA_ATOM) {
        *why = "fetch items are atoms";
        return -1;
    }
    if (fs->n == FETCH_MAX_ITEMS) {
        *why = "too many fetch items";
        return -1;
    }
    struct fetch_item *it = &fs->v[fs->n];
    memset(it, 0, sizeof(*it));
    char up[64];
    size_t k = 0;
    for (; k < a->len && k + 1 < sizeof(up) && a->s[k] != '['; k++)
        up[k] = (char)toupper((unsigned char)a->s[k]);
    up[k] = '\0';
    static const struct { const char *name; enum fetch_kind kind; } simple[] = {
        { "FLAGS", FI_FLAGS }, { "UID", FI_UID }, { "INTERNALDATE", FI_INTERNALDATE },
        { "RFC822.SIZE", FI_SIZE }, { "ENVELOPE", FI_ENVELOPE },
        { "BODYSTRUCTURE", FI_BODYSTRUCTURE }, { "RFC822", FI_RFC822 },
        { "RFC822.HEADER", FI_RFC822_HEADER }, { "RFC822.TEXT", FI_RFC822_TEXT },
        { "MODSEQ", FI_MODSEQ },
    };
    if (k == a->len) {
        if (strcmp(up, "BODY") == 0) {
            it->kind = FI_BODY;
            fs->n++;
            return 0;
        }
        for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
            if (strcmp(up, simple[i].name) == 0) {
                it->kind = simple[i].kind;
                if (it->kind == FI_UID)
                    fs->has_uid = true;
                fs->n++;
                return 0;
            }
        /* the macros */
        const char *const *m = NULL;
        static const char *const all[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", NULL };
        static const char *const fast[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", NULL };
        static const char *const full[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                                            "BODY", NULL };
        if (strcmp(up, "ALL") == 0)
            m = all;
        else if (strcmp(up, "FAST") == 0)
            m = fast;
        else if (strcmp(up, "FULL") == 0)
            m = full;
        if (m) {
            for (size_t i = 0; m[i]; i++) {
                struct imap_arg x = { .type = IA_ATOM, .s = m[i], .len = strlen(m[i]) };
                if (add_item(fs, &x, why) < 0)
                    return -1;
            }
            return 0;
        }
        *why = "unknown fetch item";
        return -1;
    }
    if (strcmp(up, "BODY") == 0 || strcmp(up, "BODY.PEEK") == 0) {
        it->kind = FI_SECTION;
        it->peek = up[4] == '.';
    } else if (strcmp(up, "BINARY") == 0 || strcmp(up, "BINARY.PEEK") == 0) {
        it->kind = FI_BINARY;
        it->peek = up[6] == '.';
    } else if (strcmp(up, "BINARY.SIZE") == 0) {
        it->kind = FI_BINARY_SIZE;
        it->peek = true;
    } else {
        *why = "unknown fetch item";
        return -1;
    }
    if (parse_section(it, a->s + k + 1, a->len - k - 1, why) < 0)
        return -1;
    if (it->kind != FI_SECTION) {
        /* BINARY sections are part numbers only (RFC 3516) */
        for (const char *p = it->section; *p; p++)
            if (!isdigit((unsigned char)*p) && *p != '.') {
                *why = "BINARY takes part numbers";
                return -1;
            }
        if (it->kind == FI_BINARY_SIZE && it->partial) {
            *why = "BINARY.SIZE takes no partial";
            return -1;
        }
    }
    fs->n++;
    return 0;
}

/* Two items whose answers would carry the same name: BODY[S] and
 * BODY.PEEK[S], or one section at one offset twice. */
static bool
same_item(const struct fetch_item *a, const struct fetch_item *b)
{
    if (a->kind != b->kind)
        return false;
    if (a->kind != FI_SECTION && a->kind != FI_BINARY && a->kind != FI_BINARY_SIZE)
        return true;
    return strcmp(a->section, b->section) == 0 && a->partial == b->partial &&
           (!a->partial || a->p_off == b->p_off);
}

static int
parse_items(const struct imap_arg *a, struct fetch_spec *fs, const char **why)
{
    memset(fs, 0, sizeof(*fs));
    if (a->type == IA_LIST) {
        if (a->nlist == 0) {
            *why = "empty fetch item list";
            return -1;
        }
        for (size_t i = 0; i < a->nlist; i++)
            if (add_item(fs, &a->list[i], why) < 0)
                return -1;
        return 0;
    }
    return add_item(fs, a, why);
}

int
fetch_parse(const struct imap_arg *a, struct fetch_spec *fs, const char **why)
{
    if (parse_items(a, fs, why) < 0)
        return -1;
    /* an item asked for twice is answered once (its answer would carry
     * the same name: a client cannot tell two apart) */
    size_t o = 0;
    for (size_t i = 0; i < fs->n; i++) {
        bool dup = false;
        for (size_t k = 0; k < o && !dup; k++)
            if (same_item(&fs->v[i], &fs->v[k])) {
                dup = true;
                if (fs->v[k].kind == FI_SECTION || fs->v[k].kind == FI_BINARY)
                    fs->v[k].peek &= fs->v[i].peek;    /* BODY[] and BODY.PEEK[]: sets \\Seen */
            }
        if (!dup)
            fs->v[o++] = fs->v[i];
    }
    fs->n = o;
    return 0;
}
