/*
 * attachment.c -- the built-in attachment policy: blocks files by their
 * real type (read from their first bytes, whatever their name or declared
 * type says) and by name (extensions, double extensions such as
 * invoice.pdf.exe), including the files inside archives of every format
 * libarchive reads (zip, 7z, rar, tar, iso, cab, ...; gzip, bzip2, xz,
 * zstd: unpack_walk.c), nested ones too, per domain.
 *
 *   attachment {
 *     action = "reject";                    # or quarantine
 *     block_types = "executable script";    # of: executable script archive
 *     block_extensions = "exe scr com ...";
 *     archives = true;                      # look into archives
 *     block_encrypted = false;              # refuse encrypted archives
 *     block_unchecked = true;               # refuse archives over the limits or broken
 *   }
 *
 * Opening archives has one budget per message (unpack.c: bytes inflated,
 * entries, depth, compression ratio, the hook's deadline), shared by all
 * its attachments and their nested archives. Of an entry only its first
 * bytes are inflated (enough to know its type), all of it only when it is
 * itself an archive to open. An archive that cannot be checked whole (over
 * the budget, nested too deep, broken or unreadable) is a finding that
 * blocks with the action, or with block_unchecked = false the symbol
 * ATTACHMENT_UNCHECKED and no verdict. An encrypted one (its entries, or
 * its names too) is named so: a finding with block_encrypted, else the
 * symbol ATTACHMENT_UNCHECKED.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

#define ENTRY_HEAD (36u << 10) /* of an entry, read to know its type (iso9660: at 32 KiB) */

static const char DEFAULT_EXTENSIONS[] =
    "exe scr com pif bat cmd cpl dll msi msp msc jar js jse vbs vbe wsf wsh wsc hta ps1 psm1 "
    "lnk reg inf scf sct url iso img vhd vhdx appx appxbundle msix application gadget chm";
static const char DEFAULT_TYPES[] = "executable";

static const char *const keys[] = { "action", "block_types", "block_extensions", "archives",
                                    "block_encrypted", "block_unchecked", NULL };

/* ------------------------------------------------------- file types */

/* Archives and compressed files, by their magic: what unpack_walk opens.
 * An attachment taken for one that libarchive cannot read is refused as
 * unreadable, so the short magics that text could begin with are checked
 * a little further (the bytes after them, a header's digits). */
static const struct { size_t at, len; const char *magic; } archives[] = {
    { 0, 4, "PK\x03\x04" },                     /* zip (docx, jar, ...) */
    { 0, 6, "Rar!\x1a\x07" },                   /* rar 4 and 5 */
    { 0, 6, "7z\xbc\xaf\x27\x1c" },
    { 0, 3, "\x1f\x8b\x08" },                   /* gzip, deflate */
    { 0, 6, "\xfd" "7zXZ\x00" },
    { 0, 4, "\x28\xb5\x2f\xfd" },               /* zstd */
    { 0, 4, "\x04\x22\x4d\x18" },               /* lz4 */
    { 0, 5, "LZIP\x01" },
    { 0, 8, "MSCF\0\0\0\0" },                   /* cab */
    { 0, 6, "xar!\x00\x1c" },
    { 0, 8, "!<arch>\n" },                      /* ar */
    { 257, 5, "ustar" },                        /* tar */
    { 32769, 5, "CD001" },                      /* iso9660 */
};

static bool
all_of(const unsigned char *d, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (d[i] == '\0' || strchr(set, d[i]) == NULL)
            return false;
    return true;
}

static bool
archive_magic(const unsigned char *d, size_t n)
{
    for (size_t i = 0; i < sizeof(archives) / sizeof(archives[0]); i++)
        if (n >= archives[i].at + archives[i].len &&
            memcmp(d + archives[i].at, archives[i].magic, archives[i].len) == 0)
            return true;
    if (n >= 10 && memcmp(d, "BZh", 3) == 0 && d[3] >= '1' && d[3] <= '9' &&
        (memcmp(d + 4, "1AY&SY", 6) == 0 || memcmp(d + 4, "\x17\x72\x45\x38\x50\x90", 6) == 0))
        return true;                            /* bzip2: a block, or the end */
    if (n >= 3 && d[0] == 0x1f && d[1] == 0x9d && (d[2] & 0x1f) >= 9 && (d[2] & 0x1f) <= 16)
        return true;                            /* compress: its code width */
    if (n >= 110 && (memcmp(d, "070701", 6) == 0 || memcmp(d, "070702", 6) == 0))
        return all_of(d + 6, 104, "0123456789abcdefABCDEF");   /* cpio, new */
    if (n >= 76 && memcmp(d, "070707", 6) == 0)
        return all_of(d + 6, 70, "01234567");                  /* cpio, portable */
    if (n >= 22 && memcmp(d + 2, "-lh", 3) == 0 && d[6] == '-' && strchr("01234567d", d[5]) &&
        d[5] != '\0' && d[20] <= 3)
        return true;                            /* lha: method, header level */
    return false;
}

/* The real type of content, from its first bytes. */
static const char *
sniff(const unsigned char *d, size_t n)
{
    if (n >= 2 && d[0] == 'M' && d[1] == 'Z')
        return "executable";                        /* PE: exe, dll, scr, ... */
    if (n >= 4 && memcmp(d, "\x7f" "ELF", 4) == 0)
        return "executable";
    if (n >= 4 && (memcmp(d, "\xcf\xfa\xed\xfe", 4) == 0 || memcmp(d, "\xce\xfa\xed\xfe", 4) == 0 ||
                   memcmp(d, "\xfe\xed\xfa\xcf", 4) == 0 || memcmp(d, "\xca\xfe\xba\xbe", 4) == 0))
        return "executable";                        /* Mach-O, fat binaries, Java classes */
    if (n >= 20 && memcmp(d, "\x4c\x00\x00\x00\x01\x14\x02\x00", 8) == 0)
        return "executable";                        /* Windows shortcut (.lnk) */
    if (n >= 2 && d[0] == '#' && d[1] == '!')
        return "script";
    return archive_magic(d, n) ? "archive" : NULL;
}

static bool
in_list(const char *list, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        const char *e = p;
        while (*e && *e != ' ' && *e != ',' && *e != '\t')
            e++;
        if ((size_t)(e - p) == wl && wl && strncasecmp(p, word, wl) == 0)
            return true;
        p = e;
    }
    return false;
}

/* ------------------------------------------------------------ settings */

struct policy {
    enum filter_verdict action;
    const char *types, *exts;
    bool archives, block_encrypted, block_unchecked;
};

static bool
parse_bool(const char *v, bool *out)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0) {
        *out = false;
        return true;
    }
    return false;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    bool b;
    enum filter_verdict v;
    size_t k;
    for (k = 0; keys[k] && strcmp(keys[k], key) != 0; k++)
        ;
    if (keys[k] == NULL) {
        snprintf(err, errsize, "%s%s%s: unknown key (action, block_types, "
                 "block_extensions, archives, block_encrypted, block_unchecked)", domain, sep, key);
        return -1;
    }
    if (strcmp(key, "action") == 0 &&
        (filter_verdict_parse(value, &v) < 0 || (v != FILTER_REJECT && v != FILTER_QUARANTINE))) {
        snprintf(err, errsize, "%s%saction: '%s' is not reject or quarantine", domain, sep,
                 value);
        return -1;
    }
    if ((strcmp(key, "archives") == 0 || strcmp(key, "block_encrypted") == 0 ||
         strcmp(key, "block_unchecked") == 0) && !parse_bool(value, &b)) {
        snprintf(err, errsize, "%s%s%s: '%s' is not true or false", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "block_types") == 0) {
        char buf[256];
        str_copy(buf, value, sizeof(buf));
        for (char *save = NULL, *t = strtok_r(buf, " ,", &save); t; t = strtok_r(NULL, " ,", &save))
            if (strcmp(t, "executable") != 0 && strcmp(t, "script") != 0 &&
                strcmp(t, "archive") != 0) {
                snprintf(err, errsize, "%s%sblock_types: '%s' is not one of: executable "
                         "script archive", domain, sep, t);
                return -1;
            }
    }
    return 0;
}

static int
att_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static void
policy_for(const struct filter_config *c, const char *domain, struct policy *p)
{
    const char *v;
    p->action = FILTER_REJECT;
    if ((v = filter_setting(c, domain, "action")) != NULL)
        filter_verdict_parse(v, &p->action);
    p->types = (v = filter_setting(c, domain, "block_types")) ? v : DEFAULT_TYPES;
    p->exts = (v = filter_setting(c, domain, "block_extensions")) ? v : DEFAULT_EXTENSIONS;
    p->archives = true;
    if ((v = filter_setting(c, domain, "archives")) != NULL)
        parse_bool(v, &p->archives);
    p->block_encrypted = false;
    if ((v = filter_setting(c, domain, "block_encrypted")) != NULL)
        parse_bool(v, &p->block_encrypted);
    p->block_unchecked = true;
    if ((v = filter_setting(c, domain, "block_unchecked")) != NULL)
        parse_bool(v, &p->block_unchecked);
}

/* ---------------------------------------------------------- checking */

/* One message's check: what was found, and the archive budget. */
struct scan {
    const struct policy *p;
    struct unpack u;
    char what[512];
    bool found;
    char unchecked[512];        /* the first archive not checked whole, and why */
};

/* A file name's verdict: its last extension blocked, and whether another
 * extension stands before it (invoice.pdf.exe). Trailing dots and spaces,
 * which Windows ignores, are ignored too. */
static bool
name_blocked(const struct policy *p, const char *name, size_t nlen, bool *double_r)
{
    char buf[256];
    size_t n = nlen < sizeof(buf) - 1 ? nlen : sizeof(buf) - 1;
    memcpy(buf, name, n);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '.' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    const char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    const char *bs = strrchr(base, '\\');
    base = bs ? bs + 1 : base;
    char *dot = strrchr(base, '.');
    if (dot == NULL || dot[1] == '\0' || !in_list(p->exts, dot + 1))
        return false;
    *dot = '\0';
    char *prev = strrchr(base, '.');
    *double_r = prev != NULL && prev[1] != '\0' && strlen(prev + 1) <= 5;
    return true;
}

/* A file's name as shown in a reply: printable, no quotes, bounded. */
static void
shown_name(const char *name, size_t nlen, char *out, size_t size)
{
    size_t k = 0;
    for (size_t i = 0; i < nlen && k + 1 < size; i++)
        out[k++] = isprint((unsigned char)name[i]) && name[i] != '"' ? name[i] : '?';
    out[k] = '\0';
}

/* An archive that could not be checked whole: a finding when the policy
 * blocks those, else noted for the ATTACHMENT_UNCHECKED symbol. */
static void
unchecked(struct scan *s, const char *shown, const char *in, const char *why)
{
    char text[sizeof(s->what)];
    snprintf(text, sizeof(text), "\"%s\"%s: %s, cannot be checked", shown, in, why);
    if (s->p->block_unchecked) {
        str_copy(s->what, text, sizeof(s->what));
        s->found = true;
    } else if (s->unchecked[0] == '\0') {
        str_copy(s->unchecked, text, sizeof(s->unchecked));
    }
}

/* An encrypted archive or entry: named so, a finding when the policy
 * blocks those, else noted for the ATTACHMENT_UNCHECKED symbol. */
static void
encrypted(struct scan *s, const char *shown, const char *in)
{
    char text[sizeof(s->what)];
    snprintf(text, sizeof(text), "\"%s\"%s: encrypted, cannot be checked", shown, in);
    if (s->p->block_encrypted) {
        str_copy(s->what, text, sizeof(s->what));
        s->found = true;
    } else if (s->unchecked[0] == '\0') {
        str_copy(s->unchecked, text, sizeof(s->unchecked));
    }
}

struct walk_ctx {
    struct scan *s;
    const char *archive;        /* its shown name, for "in ARCHIVE" */
    bool again;                 /* the entry's whole content comes next */
};

static void open_archive(struct scan *s, const char *shown, const char *in,
                         const unsigned char *data, size_t len);

/* Why the archive could not be checked, from what the walk returned. */
static void
archive_unchecked(struct scan *s, const char *shown, const char *in, int rc)
{
    if (s->u.expired)
        return;                                 /* no finding: the chain has answered */
    char why[80];
    if (rc == UNPACK_ENCRYPTED) {
        encrypted(s, shown, in);
        return;
    }
    if (rc == UNPACK_OVER)
        snprintf(why, sizeof(why), "archive over the limits (%s)", s->u.why);
    else
        str_copy(why, rc == UNPACK_BROKEN ? "broken archive (entries overlap, lie outside it "
                                            "or are named twice)"
                                          : "unreadable archive", sizeof(why));
    unchecked(s, shown, in, why);
}

/* The checks of one file that its name and first bytes decide. true when
 * it is an archive to open (data may then be only its head). */
static bool
check_file(struct scan *s, const char *shown, const char *in, const char *name, size_t nlen,
           const unsigned char *data, size_t len, bool enc)
{
    const struct policy *p = s->p;
    bool dbl = false;
    if (name_blocked(p, name, nlen, &dbl)) {
        snprintf(s->what, sizeof(s->what), "\"%s\"%s: %s", shown, in,
                 dbl ? "double extension" : "blocked file name");
        s->found = true;
        return false;
    }
    if (enc) {
        encrypted(s, shown, in);
        return false;
    }
    const char *type = data ? sniff(data, len) : NULL;
    if (type && in_list(p->types, type)) {
        snprintf(s->what, sizeof(s->what), "\"%s\"%s: %s", shown, in, type);
        s->found = true;
        return false;
    }
    return type && strcmp(type, "archive") == 0 && p->archives;
}

static int
walk_item(const struct unpack_item *it, void *arg)
{
    struct walk_ctx *w = arg;
    struct scan *s = w->s;
    char shown[200], in[260];
    const char *name = it->name;
    size_t nlen = it->nlen;
    if (it->single) {
        /* a lone compressed file: the archive's own name less its suffix */
        name = w->archive;
        const char *dot = strrchr(name, '.');
        nlen = dot && dot != name ? (size_t)(dot - name) : strlen(name);
    }
    shown_name(name, nlen, shown, sizeof(shown));
    snprintf(in, sizeof(in), " in %s", w->archive);
    if (w->again) {                                 /* all of an archive asked for */
        w->again = false;
        open_archive(s, shown, in, it->data, it->len);
    } else if (it->dir) {
        return 0;
    } else if (check_file(s, shown, in, name, nlen, it->data, it->len, it->encrypted)) {
        if (!unpack_can_enter(&s->u)) {             /* refused here: no use reading it */
            unpack_enter(&s->u, it->len);
            archive_unchecked(s, shown, in, UNPACK_OVER);
        } else if (!it->whole) {
            w->again = true;
            return UNPACK_WHOLE;
        } else {
            open_archive(s, shown, in, it->data, it->len);
        }
    }
    return s->found || s->u.why ? 1 : 0;
}

/* Open an archive and check what is in it; what cannot be checked whole
 * is said so, once (the innermost archive names itself first). */
static void
open_archive(struct scan *s, const char *shown, const char *in, const unsigned char *data,
             size_t len)
{
    struct walk_ctx w = { s, shown, false };
    int rc = unpack_walk(data, len, &s->u, ENTRY_HEAD, walk_item, &w);
    if (rc < 0 && !s->found)
        archive_unchecked(s, shown, in, rc);
}

static enum filter_status
att_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    struct policy p;
    policy_for(c, m->policy, &p);
    size_t n;
    const struct filter_part *parts = filter_parts(r, m, &n);
    struct scan s = { .p = &p };
    unpack_init(&s.u, NULL, r);
    for (size_t i = 0; i < n && !s.found && !filter_expired(r); i++) {
        const struct filter_part *fp = &parts[i];
        if (!fp->attachment && strncmp(fp->content_type, "text/", 5) == 0)
            continue;                       /* the message text itself */
        char shown[200];
        shown_name(fp->filename, strlen(fp->filename), shown, sizeof(shown));
        if (check_file(&s, shown, "", fp->filename, strlen(fp->filename), fp->data, fp->len,
                       false))
            open_archive(&s, shown[0] ? shown : "an archive", "", fp->data, fp->len);
    }
    if (filter_expired(r))
        return FILTER_ERROR;                /* the chain has answered already */
    if (s.unchecked[0])
        filter_symbol(r, "ATTACHMENT_UNCHECKED", 0.0, s.unchecked);
    if (!s.found)
        return FILTER_DONE;
    char text[600];
    snprintf(text, sizeof(text), "Attachment not allowed: %s", s.what);
    filter_symbol(r, "ATTACHMENT_BLOCKED", 10.0, s.what);
    filter_verdict(r, p.action, text);
    return FILTER_DONE;
}

static int
att_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (att_check(c, err, errsize) < 0)
        return -1;
    *ctx_r = (void *)c;
    return 0;
}

const struct filter_plugin filter_attachment = {
    .abi = FILTER_ABI_VERSION,
    .name = "attachment",
    .check = att_check,
    .init = att_init,
    .on_data_end = att_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};
