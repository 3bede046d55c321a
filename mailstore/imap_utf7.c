/*
 * imap_utf7.c -- folder names between modified UTF-7 (RFC 3501 5.1.3),
 * the one form they have on disk (as Dovecot's Maildir++ keeps them, and
 * what a client without UTF8=ACCEPT sends and sees), and UTF-8, what a
 * client that enabled UTF8=ACCEPT (RFC 6855 3) sends and sees.
 *
 * Printable US-ASCII stands for itself, '&' is "&-", every other run of
 * characters is '&', their UTF-16 in base64 with ',' for '/' and no
 * padding, '-'. A name is valid modified UTF-7 only in its one canonical
 * form (what encoding its decoded name gives back), so one folder has one
 * name in each form. Pure: no I/O, bounded by the output's size.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <glib.h>
#include "imap_private.h"

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int
b64_value(unsigned char c)
{
    const char *p = c ? strchr(b64, c) : NULL;
    return p ? (int)(p - b64) : -1;
}

/* One UTF-8 character at s (NUL-terminated): its code point and length,
 * -1 for a byte sequence that is not one (overlong, a surrogate, past
 * U+10FFFF, cut short). */
static int
utf8_next(const unsigned char *s, uint32_t *cp, size_t *len)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        *len = 1;
        return 0;
    }
    if ((c & 0xe0) == 0xc0) {
        n = 2, v = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, v = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return -1;          /* a NUL ends it here too */
        v = v << 6 | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return -1;
    *cp = v;
    *len = n;
    return 0;
}

bool
imap_utf8_valid(const char *s, size_t len)
{
    /* GLib's: no overlong forms, surrogates, code points past U+10FFFF or
     * NUL within len, nothing read past len */
    return g_utf8_validate(s, (gssize)len, NULL);
}

/* Output with a bound: put() fails once out is full (the NUL kept). */
struct sink {
    char *out;
    size_t size, o;
    bool full;
};

static void
put(struct sink *k, char c)
{
    if (k->o + 1 >= k->size) {
        k->full = true;
        return;
    }
    k->out[k->o++] = c;
}

int
imap_utf7_encode(const char *utf8, char *out, size_t size)
{
    struct sink k = { out, size, 0, size == 0 };
    const unsigned char *s = (const unsigned char *)utf8;
    while (*s && !k.full) {
        if (*s >= 0x20 && *s < 0x7f) {
            put(&k, (char)*s);
            if (*s++ == '&')
                put(&k, '-');
            continue;
        }
        /* a run of characters that are no printable ASCII */
        put(&k, '&');
        uint32_t bits = 0;
        unsigned nbits = 0;
        while (*s && !(*s >= 0x20 && *s < 0x7f)) {
            uint32_t cp;
            size_t n;
            if (utf8_next(s, &cp, &n) < 0)
                return -1;
            s += n;
            uint16_t units[2];
            size_t nu = 1;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                units[0] = (uint16_t)(0xd800 | cp >> 10);
                units[1] = (uint16_t)(0xdc00 | (cp & 0x3ff));
                nu = 2;
            } else {
                units[0] = (uint16_t)cp;
            }
            for (size_t u = 0; u < nu; u++) {
                bits = bits << 16 | units[u];
                nbits += 16;
                while (nbits >= 6) {
                    nbits -= 6;
                    put(&k, b64[(bits >> nbits) & 63]);
                }
                bits &= (1u << nbits) - 1;
            }
        }
        if (nbits)
            put(&k, b64[(bits << (6 - nbits)) & 63]);
        put(&k, '-');
    }
    if (k.full)
        return -1;
    out[k.o] = '\0';
    return 0;
}

/* Decode without the canonical check. */
static int
decode(const char *in, char *out, size_t size)
{
    struct sink k = { out, size, 0, size == 0 };
    const unsigned char *s = (const unsigned char *)in;
    while (*s && !k.full) {
        if (*s < 0x20 || *s >= 0x7f)
            return -1;
        if (*s != '&') {
            put(&k, (char)*s++);
            continue;
        }
        s++;
        if (*s == '-') {
            put(&k, '&');
            s++;
            continue;
        }
        uint32_t bits = 0, high = 0;
        unsigned nbits = 0;
        for (; *s != '-'; s++) {
            int v = b64_value(*s);
            if (v < 0)
                return -1;      /* no '-' at the end, or not base64 */
            bits = bits << 6 | (uint32_t)v;
            nbits += 6;
            if (nbits < 16)
                continue;
            nbits -= 16;
            uint32_t unit = (bits >> nbits) & 0xffff;
            bits &= (1u << nbits) - 1;
            uint32_t cp;
            if (high) {
                if (unit < 0xdc00 || unit > 0xdfff)
                    return -1;
                cp = 0x10000 + ((high - 0xd800) << 10) + (unit - 0xdc00);
                high = 0;
            } else if (unit >= 0xd800 && unit <= 0xdbff) {
                high = unit;
                continue;
            } else if (unit >= 0xdc00 && unit <= 0xdfff) {
                return -1;
            } else {
                cp = unit;
            }
            if (cp == 0)
                return -1;
            if (cp < 0x80) {
                put(&k, (char)cp);
            } else if (cp < 0x800) {
                put(&k, (char)(0xc0 | cp >> 6));
                put(&k, (char)(0x80 | (cp & 0x3f)));
            } else if (cp < 0x10000) {
                put(&k, (char)(0xe0 | cp >> 12));
                put(&k, (char)(0x80 | (cp >> 6 & 0x3f)));
                put(&k, (char)(0x80 | (cp & 0x3f)));
            } else {
                put(&k, (char)(0xf0 | cp >> 18));
                put(&k, (char)(0x80 | (cp >> 12 & 0x3f)));
                put(&k, (char)(0x80 | (cp >> 6 & 0x3f)));
                put(&k, (char)(0x80 | (cp & 0x3f)));
            }
        }
        /* the rest are padding bits, zero, fewer than 6 */
        if (high || nbits >= 6 || bits != 0)
            return -1;
        s++;
    }
    if (k.full)
        return -1;
    out[k.o] = '\0';
    return 0;
}

int
imap_utf7_decode(const char *utf7, char *out, size_t size)
{
    if (decode(utf7, out, size) < 0)
        return -1;
    /* canonical: encoding it again gives the same bytes (no printable
     * ASCII in base64, no two runs side by side, no empty run) */
    size_t l = strlen(utf7) + 1;
    char again[FOLDER_NAME_LEN * 4];
    if (l > sizeof(again) || imap_utf7_encode(out, again, l) < 0 || strcmp(again, utf7) != 0)
        return -1;
    return 0;
}
