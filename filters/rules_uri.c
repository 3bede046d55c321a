/*
 * rules_uri.c -- the URIs uri rules match, as SpamAssassin 4.0 lists them
 * (PerMsgStatus's get_uri_list; Apache License 2.0, written anew here):
 * the URIs found in the body text by its ThunderBird-like pattern (known
 * schemes, www. and ftp. hosts, mail addresses, and bare host names ending
 * in a valid TLD, from util_rb_tld), and those of the HTML parts (links,
 * images, forms, base href applied); each then canonicalized as
 * Util.pm's uri_list_canonicalize does (%-decoding, a scheme where there
 * is none, numeric and encoded host addresses, redirectors, one level of
 * redirector_pattern), every variant kept: a uri rule matches any of them.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules_eval.h"
#include "../common/util.h"

#define MAX_URIS 2000
#define MAX_URI_LENGTH 8192

struct sb { char *p; size_t n, cap; };

static void
sb_add(struct sb *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void
sb_str(struct sb *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* ------------------------------------------------------------ the TLDs */

bool
rules_tld_valid(const struct ruleset *rs, const char *tld, size_t n)
{
    char t[80];
    if (n == 0 || n >= sizeof(t))
        return false;
    for (size_t i = 0; i < n; i++)
        t[i] = (char)tolower((unsigned char)tld[i]);
    t[n] = '\0';
    const char *key = t;
    return rs->ntlds && bsearch(&key, rs->tlds, rs->ntlds, sizeof(char *), str_ptr_cmp) != NULL;
}

/* RegistryBoundaries' is_domain_valid: it ends in ".TLD" of a valid TLD */
static bool
domain_valid(const struct ruleset *rs, const char *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (isspace((unsigned char)d[i]))
            return false;
    const char *dot = NULL;
    for (size_t i = n; i-- > 0;)
        if (d[i] == '.') {
            dot = d + i;
            break;
        }
    if (dot == NULL || dot + 1 == d + n)
        return false;
    return rules_tld_valid(rs, dot + 1, (size_t)(d + n - dot - 1));
}

/* The text URI pattern (PerMsgStatus's _tbirdurire) with the rule set's
 * TLDs: compiled once per rule set. */
static bool
in_sorted(char *const *v, size_t n, const char *s)
{
    return n && bsearch(&s, v, n, sizeof(char *), str_ptr_cmp) != NULL;
}

bool
rules_domain_valid(const struct ruleset *rs, const char *d, size_t n)
{
    return domain_valid(rs, d, n);
}

/* RegistryBoundaries' split_domain */
void
rules_split_domain(const struct ruleset *rs, const char *fqdn, char *host, size_t hsize, char *dom,
                   size_t dsize)
{
    static const char *const states[] = {
        "ak", "al", "ar", "az", "ca", "co", "ct", "dc", "de", "fl", "ga", "gu", "hi", "ia", "id",
        "il", "in", "ks", "ky", "la", "ma", "md", "me", "mi", "mn", "mo", "ms", "mt", "nc", "nd",
        "ne", "nh", "nj", "nm", "nv", "ny", "oh", "ok", "or", "pa", "pr", "ri", "sc", "sd", "tn",
        "tx", "ut", "va", "vi", "vt", "wa", "wi", "wv", "wy", NULL };
    host[0] = dom[0] = '\0';
    char d[512];
    size_t o = 0;
    for (const char *p = fqdn; *p && o + 1 < sizeof(d); p++) {
        if (*p == '.' && o && d[o - 1] == '.')
            continue;               /* tr/././s */
        d[o++] = (char)tolower((unsigned char)*p);
    }
    d[o] = '\0';
    char *s = d;
    while (*s == '.')
        s++;
    size_t l = strlen(s);
    while (l && s[l - 1] == '.')
        s[--l] = '\0';
    if (*s == '\0')
        return;
    char *parts[128];
    size_t np = 0;
    for (char *save = NULL, *w = strtok_r(s, ".", &save); w && np < 128; w = strtok_r(NULL, ".", &save))
        parts[np++] = w;
    size_t first = 0;           /* the parts from here on are the domain */
    while (np - first > 1) {
        size_t left = np - first;
        char tmp[512];
        tmp[0] = '\0';
        if (left == 2 || left == 3) {
            for (size_t i = first; i < np; i++) {
                if (i > first)
                    strncat(tmp, ".", sizeof(tmp) - strlen(tmp) - 1);
                strncat(tmp, parts[i], sizeof(tmp) - strlen(tmp) - 1);
            }
        }
        if (left == 2 && in_sorted(rs->tld2, rs->ntld2, tmp))
            break;
        if (left == 3) {
            if (strcmp(parts[first + 2], "us") == 0) {
                bool st = false;
                for (size_t k = 0; states[k] && !st; k++)
                    st = strcmp(states[k], parts[first + 1]) == 0;
                if (st)
                    break;
            } else if (in_sorted(rs->tld3, rs->ntld3, tmp)) {
                break;
            }
        }
        if (left == 4 && strcmp(parts[first + 3], "us") == 0 &&
            ((strcmp(parts[first], "pvt") == 0 && strcmp(parts[first + 1], "k12") == 0) ||
             strcmp(parts[first], "ci") == 0 || strcmp(parts[first], "co") == 0)) {
            bool st = false;
            for (size_t k = 0; states[k] && !st; k++)
                st = strcmp(states[k], parts[first + 2]) == 0;
            if (st)
                break;
        }
        first++;
    }
    /* the last hostname part goes back onto the domain */
    if (first > 0)
        first--;
    for (size_t i = 0; i < first; i++) {
        if (i)
            strncat(host, ".", hsize - strlen(host) - 1);
        strncat(host, parts[i], hsize - strlen(host) - 1);
    }
    for (size_t i = first; i < np; i++) {
        if (i > first)
            strncat(dom, ".", dsize - strlen(dom) - 1);
        strncat(dom, parts[i], dsize - strlen(dom) - 1);
    }
}

void
rules_uri_setup(struct ruleset *rs)
{
    /* qsort's array may not be NULL even for 0 items (UBSan says so) */
    if (rs->ntld2)
        qsort(rs->tld2, rs->ntld2, sizeof(char *), str_ptr_cmp);
    if (rs->ntld3)
        qsort(rs->tld3, rs->ntld3, sizeof(char *), str_ptr_cmp);
    if (rs->ntlds)
        qsort(rs->tlds, rs->ntlds, sizeof(char *), str_ptr_cmp);
    size_t o = 0;
    for (size_t i = 0; i < rs->ntlds; i++)
        if (o == 0 || strcmp(rs->tlds[o - 1], rs->tlds[i]) != 0)
            rs->tlds[o++] = rs->tlds[i];
        else
            free(rs->tlds[i]);
    rs->ntlds = o;
#define START "><\"'`,{[(|\\s\\x1b\\xa0"
#define END "><\"`}\\]{[|\\s\\x1b\\xa0"
#define ENDMAIL END ",('\\x80-\\xff"
#define ENDMAILAT ENDMAIL "@"
    struct sb tlds = { 0 };
    sb_str(&tlds, "(?<![a-zA-Z0-9-])(?:");
    for (size_t i = 0; i < rs->ntlds; i++) {
        if (i)
            sb_str(&tlds, "|");
        for (const char *p = rs->tlds[i]; *p; p++) {
            if (!isalnum((unsigned char)*p))
                sb_str(&tlds, "\\");
            sb_add(&tlds, p, 1);
        }
    }
    if (rs->ntlds == 0)
        sb_str(&tlds, "no_tlds_defined");
    /* (caseless: a letter either way) */
    for (size_t i = 0; i < rs->ntlds || (i == 0 && rs->ntlds == 0); i++) {
        unsigned char ch = (unsigned char)(rs->ntlds ? rs->tlds[i][0] : 'n');
        rs->uri_tld_first[ch] = true;
        if (ch < 0x80 && isalpha(ch)) {
            rs->uri_tld_first[tolower(ch)] = true;
            rs->uri_tld_first[toupper(ch)] = true;
        }
    }
    sb_str(&tlds, ")(?!(?:[a-zA-Z0-9-]|\\.[a-zA-Z0-9]))");
    struct sb re = { 0 };
    sb_str(&re, "(?:\\b|(?<=\\x1b\\(.)|(?<=[" START "]))"
                "(?:(?:((?:(?:https?|ftp):\\/\\/|(?:www\\d{0,2}|ftp)\\.)[^" END "]{1,2048})(?=(?:[" END "]|\\z)))"
                "|(?:((?:mailto:[^" ENDMAIL "]{1,2048}|[^" ENDMAILAT "]{1,251}\\@[^" ENDMAIL "]{1,251}))"
                "(?=(?:[" ENDMAIL "]|\\z)))"
                "|(?:(?:^|(?<=[\\!\\\"\\#\\$\\&\\'\\(\\)\\*\\+\\,\\/\\:\\;\\<\\=\\>\\?\\@\\[\\\\\\]\\^\\`\\{\\|\\}\\~\\s\\x1b\\xa0]))"
                "(([a-z\\d][a-z\\d._-]{0,251}\\.");
    sb_str(&re, tlds.p);
    sb_str(&re, ")\\.?(?::\\d{1,5})?(?:\\/[^" END "]{1,2048})?)(?=(?:[" END "]|\\z))))");
    free(tlds.p);
    char err[256];
    rs->uri_re = rules_re_user(re.p, PCRE2_CASELESS, err, sizeof(err));
    if (rs->uri_re == NULL)
        log_warn("rules: the text URI pattern does not compile (%s): no bare host names", err);
    free(re.p);
#undef START
#undef END
#undef ENDMAIL
#undef ENDMAILAT
}

/* ------------------------------------------------------------ canonical */

struct ulist { char **v; size_t n; };

static bool
ul_has(const struct ulist *L, const char *s)
{
    for (size_t i = 0; i < L->n; i++)
        if (strcmp(L->v[i], s) == 0)
            return true;
    return false;
}

static void
ul_add(struct ulist *L, const char *s, size_t n)
{
    if (L->n >= MAX_URIS)
        return;
    char *u = xstrndup(s, n);
    if (ul_has(L, u)) {
        free(u);
        return;
    }
    L->v = xrealloc(L->v, (L->n + 1) * sizeof(char *));
    L->v[L->n++] = u;
}

static void
ul_str(struct ulist *L, const char *s)
{
    ul_add(L, s, strlen(s));
}

static void
ul_free(struct ulist *L)
{
    for (size_t i = 0; i < L->n; i++)
        free(L->v[i]);
    free(L->v);
    L->v = NULL;
    L->n = 0;
}

static int
hexv(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
         : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* Util.pm's url_encode (which mostly decodes): %2x..%7x other than %20
 * and %7F decoded; control, 8-bit, '"', '%', '<' and '>' encoded */
static char *
url_encode(const char *u)
{
    struct sb b = { 0 };
    sb_add(&b, "", 0);
    for (const char *p = u; *p; p++) {
        if (p[0] == '%' && hexv((unsigned char)p[1]) >= 0 && hexv((unsigned char)p[2]) >= 0) {
            char a = (char)tolower((unsigned char)p[1]), c2 = (char)tolower((unsigned char)p[2]);
            bool keep = (a == '2' && c2 == '0') || (a == '7' && c2 == 'f') ||
                        strchr("0189abcdef", a) != NULL;
            if (keep) {
                sb_add(&b, p, 3);
            } else {
                char ch = (char)(hexv((unsigned char)p[1]) * 16 + hexv((unsigned char)p[2]));
                sb_add(&b, &ch, 1);
            }
            p += 2;
            continue;
        }
        unsigned char ch = (unsigned char)*p;
        if (ch <= 040 || ch >= 0177 || ch == '"' || ch == '%' || ch == '<' || ch == '>') {
            char e[4];
            snprintf(e, sizeof(e), "%%%02x", ch);
            sb_add(&b, e, 3);
        } else {
            sb_add(&b, p, 1);
        }
    }
    return b.p;
}

static bool
m(const char *re, unsigned flags, const char *s, const size_t **ov)
{
    return rules_re_exec(rules_re(re, flags), s, strlen(s), 0, ov) > 0;
}

static char *
cap(const char *s, const size_t *ov, int k)
{
    if (ov[2 * k] == PCRE2_UNSET)
        return xstrdup("");
    return xstrndup(s + ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
}

static char *
join3(const char *a, const char *b, const char *c)
{
    size_t l = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = xmalloc(l);
    str_fmt(s, l, "%s%s%s", a, b, c);
    return s;
}

/* an octet of a dotted host: 0x.. hex, 0.. octal, else decimal */
static bool
octet(const char *s, size_t n, unsigned long *v)
{
    char t[64];
    if (n == 0 || n >= sizeof(t))
        return false;
    memcpy(t, s, n);
    t[n] = '\0';
    char *e;
    if (n > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X'))
        *v = strtoul(t + 2, &e, 16);
    else
        *v = strtoul(t, &e, 10);
    return *e == '\0';
}

/* uri_list_canonicalize for one URI: every variant into out */
static void
canonicalize(const struct ruleset *rs, const char *in, struct ulist *out)
{
    struct ulist work = { 0 };
    ul_str(&work, in);
    for (size_t wi = 0; wi < work.n && wi < 50; wi++) {
        /* no line breaks, no white space around, no CR */
        struct sb t = { 0 };
        sb_add(&t, "", 0);
        for (const char *p = work.v[wi]; *p; p++)
            if (*p != '\n' && *p != '\r')
                sb_add(&t, p, 1);
        char *uri = t.p;
        size_t b = 0, e = strlen(uri);
        while (b < e && isspace((unsigned char)uri[b]))
            b++;
        while (e > b && isspace((unsigned char)uri[e - 1]))
            e--;
        memmove(uri, uri + b, e - b);
        uri[e - b] = '\0';
        free(work.v[wi]);
        work.v[wi] = uri;
        const size_t *ov;
        if (strlen(uri) <= 1 || m("^(?:[#?&]|/(?!/))", 0, uri, &ov))
            continue;
        if (m("^mailto:", PCRE2_CASELESS, uri, &ov) || m("^[^:]*\\@", 0, uri, &ov)) {
            if (m("^([^\\@]+\\@[^?]+)\\?", 0, uri, &ov)) {
                char *x = cap(uri, ov, 1);
                ul_str(out, x);
                free(x);
            }
            if (m("^([^\\@]+\\@[^?&]+)\\&", 0, uri, &ov)) {
                char *x = cap(uri, ov, 1);
                ul_str(out, x);
                free(x);
            }
            if (strstr(uri, "%20") && m("^(?:mailto:)?(?:\\%20)*([^\\@]+\\@[^?&%]+)", 0, uri, &ov)) {
                char *x = cap(uri, ov, 1), *y = join3("mailto:", x, "");
                ul_str(out, y);
                free(x);
                free(y);
            }
            if (m("^[^?&]*<([^\\@>]+\\@[^>]+)>", 0, uri, &ov)) {
                char *x = cap(uri, ov, 1), *y = join3("mailto:", x, "");
                ul_str(out, y);
                free(x);
                free(y);
            }
            continue;
        }
        char *nuri = xstrdup(uri);
        for (char *p = nuri; *p; p++)
            if (*p == '\\')
                *p = '/';
        if (m("^(https?:)/{0,2}", PCRE2_CASELESS, nuri, &ov)) {
            char *s1 = cap(nuri, ov, 1);
            char *x = join3(s1, "//", nuri + ov[1]);
            free(s1);
            free(nuri);
            nuri = x;
        }
        if (m("%[0-9a-fA-F]{2}", 0, nuri, &ov)) {
            char *x = url_encode(nuri);
            free(nuri);
            nuri = x;
        }
        if (!m("^[-_a-z0-9]+:", PCRE2_CASELESS, nuri, &ov)) {
            char *x = join3(strncmp(nuri, "ftp.", 4) == 0 ? "ftp://" : "http://", nuri, "");
            free(nuri);
            nuri = x;
        }
        if (m("^(https?://[^/?#]+)([?#])", PCRE2_CASELESS, nuri, &ov)) {
            char *a = cap(nuri, ov, 1);
            char *x = join3(a, "/", nuri + ov[4]);
            free(a);
            free(nuri);
            nuri = x;
        }
        /* &#33; .. &#126;, &#x21; .. &#x7e;, and the Unicode dots */
        if (strstr(nuri, "&#")) {
            struct sb d = { 0 };
            sb_add(&d, "", 0);
            for (const char *p = nuri; *p; p++) {
                if (p[0] == '&' && p[1] == '#') {
                    const char *q = p + 2;
                    bool hex = *q == 'x' || *q == 'X';
                    if (hex)
                        q++;
                    const char *ds = q;
                    while (hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q))
                        q++;
                    if (q > ds && *q == ';') {
                        char num[16];
                        size_t nl = (size_t)(q - ds) < 15 ? (size_t)(q - ds) : 15;
                        memcpy(num, ds, nl);
                        num[nl] = '\0';
                        unsigned long v = strtoul(num, NULL, hex ? 16 : 10);
                        if (v >= 33 && v <= 126) {
                            char ch = (char)v;
                            sb_add(&d, &ch, 1);
                            p = q;
                            continue;
                        }
                        if (v == 0x2e || v == 12290 || v == 65294 || v == 65377) {
                            sb_add(&d, ".", 1);
                            p = q;
                            continue;
                        }
                    }
                }
                sb_add(&d, p, 1);
            }
            free(nuri);
            nuri = d.p;
        }
        if (strcmp(nuri, uri) != 0)
            ul_str(out, nuri);
        int rc;
        if ((rc = rules_re_exec(rules_re("^(https?://)([^\\@/?#]*\\@)?([^/?#:]+)((?::(\\d*))?.*)$",
                                         PCRE2_CASELESS | PCRE2_DOTALL), nuri, strlen(nuri), 0, &ov)) > 0) {
            char *proto = cap(nuri, ov, 1), *auth = cap(nuri, ov, 2), *host = cap(nuri, ov, 3);
            char *rest = cap(nuri, ov, 4), *port = cap(nuri, ov, 5);
            bool port_given = ov[10] != PCRE2_UNSET;
            char *rest_noport = NULL;
            bool http = strcasecmp(proto, "http://") == 0;
            if (!port_given) {
                free(port);
                port = xstrdup(http ? "80" : "443");
            } else {
                const char *def = http ? ":80" : ":443";
                size_t dl = strlen(def);
                if (strncmp(rest, def, dl) == 0 && !isalnum((unsigned char)rest[dl]) && rest[dl] != '_') {
                    rest_noport = xstrdup(rest + dl);
                    char *x = join3(proto, host, rest_noport);
                    ul_str(out, x);
                    free(x);
                }
            }
            /* host lower case, as idn_to_ascii gives an ASCII one */
            char *nhost = xstrdup(host);
            for (char *p = nhost; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            /* control characters out of the host */
            struct sb h = { 0 };
            sb_add(&h, "", 0);
            bool had_ctl = false;
            for (const char *p = host; *p; p++) {
                if ((unsigned char)*p <= 0x20) {
                    had_ctl = true;
                    continue;
                }
                sb_add(&h, p, 1);
            }
            free(host);
            host = h.p;
            if (had_ctl) {
                char *x = join3(proto, host, rest);
                ul_str(out, x);
                free(x);
            }
            /* one level of redirector */
            char *whole = join3(proto, host, rest);
            bool found = false;
            for (size_t k = 0; k < rs->nredirectors && !found; k++) {
                int r2 = rules_re_exec(rs->redirectors[k], whole, strlen(whole), 0, &ov);
                if (r2 > 1 && ov[2] != PCRE2_UNSET && memchr(whole + ov[2], '.', ov[3] - ov[2])) {
                    ul_add(&work, whole + ov[2], ov[3] - ov[2]);
                    found = true;
                }
            }
            if (!found && m("(https?:/{0,2}[^&#]+)", PCRE2_CASELESS, rest, &ov) &&
                memchr(rest + ov[2], '.', ov[3] - ov[2]))
                ul_add(&work, rest + ov[2], ov[3] - ov[2]);
            free(whole);
            /* trailing punctuation off the host */
            size_t hl = strlen(host);
            size_t k = hl;
            while (k > 0 && !isalnum((unsigned char)host[k - 1]))
                k--;
            if (k < hl) {
                host[k] = '\0';
                char *x = join3(proto, host, rest);
                ul_str(out, x);
                free(x);
            }
            /* numeric hosts */
            if ((rc = rules_re_exec(rules_re("^((?:0x[0-9a-f]+|\\d+)\\.)((?:0x[0-9a-f]+|\\d+)\\.)((?:0x[0-9a-f]+|\\d+)\\.)(0x[0-9a-f]+|\\d+)$",
                                             PCRE2_CASELESS), host, strlen(host), 0, &ov)) > 0) {
                struct sb ip = { 0 };
                sb_add(&ip, "", 0);
                for (int q = 1; q <= 4; q++) {
                    const char *os = host + ov[2 * q];
                    size_t ol = ov[2 * q + 1] - ov[2 * q];
                    bool dot = os[ol - 1] == '.';
                    size_t dl = dot ? ol - 1 : ol;
                    char oct[64];
                    snprintf(oct, sizeof(oct), "%.*s", (int)(dl < 63 ? dl : 63), os);
                    char res[64];
                    if (strncasecmp(oct, "0x", 2) == 0) {
                        snprintf(res, sizeof(res), "%lu", strtoul(oct + 2, NULL, 16));
                    } else {
                        /* s/^0+([1-3][0-7]{0,2}|[4-7][0-7]?)\b/oct/; then s/^0+// */
                        const size_t *ov2;
                        if (m("^0+([1-3][0-7]{0,2}|[4-7][0-7]?)\\b", 0, oct, &ov2))
                            snprintf(res, sizeof(res), "%lu%s", strtoul(oct + ov2[2], NULL, 8),
                                     oct + ov2[3]);
                        else
                            str_copy(res, oct, sizeof(res));
                        size_t z = 0;
                        while (res[z] == '0')
                            z++;
                        memmove(res, res + z, strlen(res + z) + 1);
                    }
                    sb_str(&ip, res);
                    if (dot)
                        sb_str(&ip, ".");
                }
                char *x = join3(proto, ip.p, rest);
                ul_str(out, x);
                free(x);
                free(ip.p);
            } else if (m("^0x[0-9a-f]+$", PCRE2_CASELESS, host, &ov) || m("^[0-9]+$", 0, host, &ov)) {
                unsigned long v = 0;
                if (host[0] == '0' && (host[1] == 'x' || host[1] == 'X')) {
                    size_t hn = strlen(host + 2);
                    v = strtoul(host + 2 + (hn > 8 ? hn - 8 : 0), NULL, 16);
                } else {
                    octet(host, strlen(host), &v);
                }
                char ip[32];
                snprintf(ip, sizeof(ip), "%lu.%lu.%lu.%lu", (v >> 24) & 255, (v >> 16) & 255,
                         (v >> 8) & 255, v & 255);
                char *x = join3(proto, ip, rest);
                ul_str(out, x);
                free(x);
            } else if (http && auth[0] == '\0' && strcmp(nhost, "localhost") != 0 &&
                       strcmp(port, "80") == 0 && m("^(?:www\\.)?([^.]+)$", 0, nhost, &ov) &&
                       !domain_valid(rs, nhost, strlen(nhost))) {
                /* http://foobar as Firefox reads it: http://www.foobar.com */
                char *w = cap(nhost, ov, 1);
                char *y = join3("www.", w, ".com");
                char *x = join3(proto, y, rest);
                ul_str(out, x);
                free(x);
                free(y);
                free(w);
            }
            free(proto);
            free(auth);
            free(host);
            free(nhost);
            free(rest);
            free(port);
            free(rest_noport);
        }
        free(nuri);
    }
    for (size_t i = 0; i < work.n; i++)
        ul_str(out, work.v[i]);
    ul_free(&work);
}

/* RegistryBoundaries' uri_to_domain: does the URI give a domain? */
static bool
has_domain(const struct ruleset *rs, const char *uri_in)
{
    char *u = xstrdup(uri_in);
    for (char *p = u; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    const size_t *ov;
    bool ok = false;
    char *h = u;
    if (m("^(?:javascript|cid|file):", 0, u, &ov))
        goto done;
    if (strncmp(u, "mailto:", 7) == 0) {
        h = u + 7;
        char *q = strchr(h, '?');
        if (q)
            *q = '\0';
        char *at = strchr(h, '@');
        if (at && strchr(at + 1, '@'))
            goto done;
        char *last = strrchr(h, '@');
        if (last == NULL)
            goto done;
        h = last + 1;
    } else {
        if (m("^[a-z]+:/{0,2}", 0, h, &ov))
            h += ov[1];
        h[strcspn(h, "/?#")] = '\0';
        char *at = strrchr(h, '@');
        if (at)
            h = at + 1;
        if (m(":\\d*$", 0, h, &ov))
            h[ov[0]] = '\0';
    }
    if (m("\\%(?:2[1-9a-f]|[3-6][0-9a-f]|7[0-9a-e])", 0, h, &ov))
        goto done;
    if (m("^(?:\\d{1,3}\\.){3}\\d{1,3}$", 0, h, &ov) || m("^[0-9a-f:]+:[0-9a-f.:]*$", 0, h, &ov)) {
        ok = true;
        goto done;
    }
    ok = sa_fqdn_valid(h, strlen(h)) && domain_valid(rs, h, strlen(h));
done:
    free(u);
    return ok;
}

/* add_uri_detail_list: the canonical variants of uri into the list */
static void
add_uri(struct rmsg *c, const char *uri, bool valid_domain, struct ulist *all)
{
    struct ulist cl = { 0 };
    canonicalize(c->rs, uri, &cl);
    bool any_domain = false;
    for (size_t i = 0; i < cl.n; i++) {
        if (strlen(cl.v[i]) > MAX_URI_LENGTH)
            cl.v[i][MAX_URI_LENGTH] = '\0';
        if (!any_domain)
            any_domain = has_domain(c->rs, cl.v[i]);
    }
    if (cl.n && !(valid_domain && !any_domain))
        for (size_t i = 0; i < cl.n; i++)
            ul_str(all, cl.v[i]);
    ul_free(&cl);
}

/* The first mark of a URI in s[from, n), n when there is none. Each form
 * of the text URI pattern holds one within URI_REACH bytes of where its
 * match starts: "://" (a scheme, at most 5 letters before), "www" or
 * "ftp." (a host, where it starts), "mailto:" (where it starts) or "@"
 * (mail, at most 251 bytes before), a "." before a byte a TLD starts with
 * (a bare host name, at most 252 bytes before). So no match starts before
 * the first mark less URI_REACH: most paragraphs of prose have none, and
 * the pattern tries its TLDs at every word it passes. */
#define URI_REACH 256
bool rules_uri_exhaustive;          /* (for the fuzz target: search everywhere) */
static size_t
uri_next_mark(const struct ruleset *rs, const char *s, size_t n, size_t from)
{
    if (rules_uri_exhaustive)
        return from;
    for (size_t i = from; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '@')
            return i;
        if (i + 1 >= n)
            break;
        if (ch == '.' && rs->uri_tld_first[(unsigned char)s[i + 1]])
            return i;
        if (ch == ':' && i + 2 < n && s[i + 1] == '/' && s[i + 2] == '/')
            return i;
        if (i + 3 <= n) {
            /* www, ftp. and mailto: in either case */
            char a = (char)(ch | 0x20), b = (char)(s[i + 1] | 0x20), d = (char)(s[i + 2] | 0x20);
            if (a == 'w' && b == 'w' && d == 'w')
                return i;
            if (a == 'f' && b == 't' && d == 'p' && i + 3 < n && s[i + 3] == '.')
                return i;
            if (a == 'm' && b == 'a' && d == 'i' && i + 7 <= n && strncasecmp(s + i, "mailto:", 7) == 0)
                return i;
        }
    }
    return n;
}

void
rmsg_uris(struct rmsg *c)
{
    if (c->uris_done)
        return;
    c->uris_done = true;
    rmsg_texts(c);
    struct ulist all = { 0 };
    struct ulist seen = { 0 };
    const size_t *ov;
    /* the body text */
    for (size_t li = 0; c->rs->uri_re && li < c->nbline; li++) {
        const char *line = c->sbody + c->bline_off[li];
        size_t ll = c->bline_len[li];
        size_t off = 0, mark;
        int rc;
        /* the search starts no earlier than a match can (see uri_next_mark) */
        while (off <= ll && (mark = uri_next_mark(c->rs, line, ll, off)) < ll &&
               (rc = rules_re_exec(c->rs->uri_re, line, ll,
                                   mark > off + URI_REACH ? mark - URI_REACH : off, &ov)) > 0) {
            size_t mo = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
            int k = ov[2] != PCRE2_UNSET ? 1 : (rc > 2 && ov[4] != PCRE2_UNSET) ? 2 : 3;
            char *raw = xstrndup(line + ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
            int type = k;        /* 1 scheme, 2 mail, 3 schemeless */
            off = mo;
            /* s/(^[^(]*)\).*$/$1/ ; s/[-~!@#^&*()_+=:;\'?,.]*$// */
            const size_t *ov2;
            if (m("^([^(]*)\\).*$", PCRE2_DOTALL, raw, &ov2))
                raw[ov2[3]] = '\0';
            size_t rl = strlen(raw);
            while (rl && strchr("-~!@#^&*()_+=:;'?,.", raw[rl - 1]))
                raw[--rl] = '\0';
            if (ul_has(&seen, raw)) {
                free(raw);
                continue;
            }
            ul_str(&seen, raw);
            if ((type == 2 && !strchr(raw, '@')) || m("^[cm]id:", PCRE2_CASELESS, raw, &ov2) ||
                m("^\\w+:\\/{0,2}$", PCRE2_CASELESS, raw, &ov2)) {
                free(raw);
                continue;
            }
            char *uri = xstrdup(raw);
            bool skip = false;
            if (!m("^(?:https?|ftp|mailto):", PCRE2_CASELESS, uri, &ov2)) {
                char *x = NULL;
                if (strncasecmp(uri, "ftp.", 4) == 0)
                    x = join3("ftp://", uri, "");
                else if (m("^www\\d{0,2}\\.", PCRE2_CASELESS, uri, &ov2))
                    x = join3("http://", uri, "");
                else if (m("\\/.+\\@", 0, uri, &ov2))
                    x = join3("http://", uri, "");
                else if (strchr(uri, '@')) {
                    if (!m("\\@.+?\\.", 0, uri, &ov2) || strstr(uri, "&nbsp;")) {
                        skip = true;
                    } else {
                        char *u2 = uri;
                        if (m("^(?:skype|e?-?mail)?:+", PCRE2_CASELESS, u2, &ov2))
                            u2 += ov2[1];
                        x = join3("mailto:", u2, "");
                    }
                } else if (!strchr(uri, '.')) {
                    skip = true;
                } else {
                    x = join3("http://", uri, "");
                }
                if (x) {
                    free(uri);
                    uri = x;
                }
            }
            if (!skip && strncasecmp(uri, "mailto:", 7) == 0) {
                if (m("\\%[0-9a-f]{2}", PCRE2_CASELESS, uri, &ov2)) {
                    char *x = url_encode(uri);
                    free(uri);
                    uri = x;
                }
                if (!m("\\@([^?&>]*)", 0, uri, &ov2)) {
                    skip = true;
                } else {
                    char *host = cap(uri, ov2, 1);
                    size_t hl = strlen(host);
                    while (hl >= 3 && strcmp(host + hl - 3, "%20") == 0)
                        host[hl -= 3] = '\0';
                    char *hl_lc = xstrdup(host);
                    for (char *p = hl_lc; *p; p++)
                        *p = (char)tolower((unsigned char)*p);
                    skip = !domain_valid(c->rs, hl_lc, strlen(hl_lc));
                    free(hl_lc);
                    free(host);
                }
            }
            if (!skip)
                add_uri(c, uri, true, &all);
            free(uri);
            free(raw);
        }
    }
    c->text_uris = seen.v;
    c->ntext_uris = seen.n;
    /* the HTML parts */
    for (size_t i = 0; i < c->nhtml; i++)
        for (size_t k = 0; k < c->html_all[i]->nuri; k++)
            add_uri(c, c->html_all[i]->uri[k].uri, false, &all);
    c->uris = all.v;
    c->nuris = all.n;
}
