/*
 * attachment.c -- the built-in attachment policy: blocks files by their
 * real type (read from their first bytes, whatever their name or declared
 * type says) and by name (extensions, double extensions such as
 * invoice.pdf.exe), including the files inside zip archives, nested ones
 * too, per domain.
 *
 *   attachment {
 *     action = "reject";                    # or quarantine
 *     block_types = "executable script";    # of: executable script archive
 *     block_extensions = "exe scr com ...";
 *     archives = true;                      # look into zip archives
 *     block_encrypted = false;              # refuse archives we cannot look into
 *   }
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "filter.h"
#include "filters.h"
#include "../common/common.h"

#define MAX_ZIP_DEPTH 4
#define MAX_INFLATE (16u << 20)

static const char DEFAULT_EXTENSIONS[] =
    "exe scr com pif bat cmd cpl dll msi msp msc jar js jse vbs vbe wsf wsh wsc hta ps1 psm1 "
    "lnk reg inf scf sct url iso img vhd vhdx appx appxbundle msix application gadget chm";
static const char DEFAULT_TYPES[] = "executable";

static const char *const keys[] = { "action", "block_types", "block_extensions", "archives",
                                    "block_encrypted", NULL };

/* ------------------------------------------------------- file types */

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
    if (n >= 4 && memcmp(d, "PK\x03\x04", 4) == 0)
        return "archive";
    if ((n >= 6 && memcmp(d, "Rar!\x1a\x07", 6) == 0) || (n >= 6 && memcmp(d, "7z\xbc\xaf\x27\x1c", 6) == 0) ||
        (n >= 2 && d[0] == 0x1f && d[1] == 0x8b))
        return "archive";
    return NULL;
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
    bool archives, block_encrypted;
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
                 "block_extensions, archives, block_encrypted)", domain, sep, key);
        return -1;
    }
    if (strcmp(key, "action") == 0 &&
        (filter_verdict_parse(value, &v) < 0 || (v != FILTER_REJECT && v != FILTER_QUARANTINE))) {
        snprintf(err, errsize, "%s%saction: '%s' is not reject or quarantine", domain, sep,
                 value);
        return -1;
    }
    if ((strcmp(key, "archives") == 0 || strcmp(key, "block_encrypted") == 0) &&
        !parse_bool(value, &b)) {
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
}

/* ---------------------------------------------------------- checking */

struct finding {
    char what[512];
    bool found;
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

static void
check_file(const struct policy *p, const char *name, size_t nlen, const unsigned char *data,
           size_t len, bool encrypted, const char *where, unsigned depth, struct finding *f);

struct zip_ctx {
    const struct policy *p;
    const char *archive;
    unsigned depth;
    struct finding *f;
};

static int
zip_entry(const char *name, size_t nlen, const unsigned char *data, size_t len, bool encrypted,
          void *arg)
{
    struct zip_ctx *z = arg;
    if (nlen > 0 && name[nlen - 1] == '/')
        return 0;                                   /* a directory */
    check_file(z->p, name, nlen, data, len, encrypted, z->archive, z->depth, z->f);
    return z->f->found ? 1 : 0;
}

static void
check_file(const struct policy *p, const char *name, size_t nlen, const unsigned char *data,
           size_t len, bool encrypted, const char *where, unsigned depth, struct finding *f)
{
    char shown[200];
    size_t k = 0;
    for (size_t i = 0; i < nlen && k + 1 < sizeof(shown); i++)
        shown[k++] = isprint((unsigned char)name[i]) && name[i] != '"' ? name[i] : '?';
    shown[k] = '\0';
    char in[260] = "";
    if (where)
        snprintf(in, sizeof(in), " in %s", where);
    bool dbl = false;
    if (name_blocked(p, name, nlen, &dbl)) {
        snprintf(f->what, sizeof(f->what), "\"%s\"%s: %s", shown, in,
                 dbl ? "double extension" : "blocked file name");
        f->found = true;
        return;
    }
    if (encrypted) {
        if (p->block_encrypted) {
            snprintf(f->what, sizeof(f->what), "\"%s\"%s: encrypted, cannot be checked", shown, in);
            f->found = true;
        }
        return;
    }
    const char *type = data ? sniff(data, len) : NULL;
    if (type && in_list(p->types, type)) {
        snprintf(f->what, sizeof(f->what), "\"%s\"%s: %s", shown, in, type);
        f->found = true;
        return;
    }
    if (type && strcmp(type, "archive") == 0 && p->archives && depth < MAX_ZIP_DEPTH &&
        len >= 4 && memcmp(data, "PK\x03\x04", 4) == 0) {
        struct zip_ctx z = { p, shown[0] ? shown : "an archive", depth + 1, f };
        zip_walk(data, len, MAX_INFLATE, zip_entry, &z);
    }
}

static enum filter_status
att_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    struct policy p;
    policy_for(c, m->policy, &p);
    size_t n;
    const struct filter_part *parts = filter_parts(r, m, &n);
    struct finding f = { "", false };
    for (size_t i = 0; i < n && !f.found; i++) {
        const struct filter_part *fp = &parts[i];
        if (!fp->attachment && strncmp(fp->content_type, "text/", 5) == 0)
            continue;                       /* the message text itself */
        check_file(&p, fp->filename, strlen(fp->filename), fp->data, fp->len, false, NULL, 0, &f);
    }
    if (!f.found)
        return FILTER_DONE;
    char text[600];
    snprintf(text, sizeof(text), "Attachment not allowed: %s", f.what);
    filter_symbol(r, "ATTACHMENT_BLOCKED", 10.0, f.what);
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
};
