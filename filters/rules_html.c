/*
 * rules_html.c -- an HTML part as SpamAssassin's rules see it: the
 * tokens HTML::Parser would report (start and end tags with their
 * attributes, text with its entities decoded, comments, declarations,
 * script and style as literal text) handed to the logic of SpamAssassin
 * 4.0's Mail::SpamAssassin::HTML (Apache License 2.0; written anew here):
 * the rendered text (whitespace of block tags, text styles: colors, sizes,
 * display and visibility), the links with their types and the base href,
 * the counts and flags the HTML eval tests read (inside, tags, elements,
 * closed_extra, obfuscation, image area, font sizes, low-contrast text,
 * titles, comments, charsets). The named colors and HTML 4 entities are
 * the standards' lists.
 *
 * One room though long: one HTML::Parser-like state machine; the tokens,
 * the rendering and the links all read and write its state.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <glib.h>
#include "rules_eval.h"
#include "../common/util.h"

#define MAX_STYLE 256
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

static const struct { const char *name; unsigned long rgb; } colors[] = {
    { "aliceblue", 0xf0f8ff }, { "antiquewhite", 0xfaebd7 }, { "aqua", 0x00ffff }, { "aquamarine", 
    0x7fffd4 }, { "azure", 0xf0ffff }, { "beige", 0xf5f5dc }, { "bisque", 0xffe4c4 }, { "black", 
    0x000000 }, { "blanchedalmond", 0xffebcd }, { "blue", 0x0000ff }, { "blueviolet", 0x8a2be2 }, { 
    "brown", 0xa52a2a }, { "burlywood", 0xdeb887 }, { "cadetblue", 0x5f9ea0 }, { "chartreuse", 
    0x7fff00 }, { "chocolate", 0xd2691e }, { "coral", 0xff7f50 }, { "cornflowerblue", 0x6495ed }, { 
    "cornsilk", 0xfff8dc }, { "crimson", 0xdc143c }, { "cyan", 0x00ffff }, { "darkblue", 0x00008b 
    }, { "darkcyan", 0x008b8b }, { "darkgoldenrod", 0xb8860b }, { "darkgray", 0xa9a9a9 }, { 
    "darkgreen", 0x006400 }, { "darkgrey", 0xa9a9a9 }, { "darkkhaki", 0xbdb76b }, { "darkmagenta", 
    0x8b008b }, { "darkolivegreen", 0x556b2f }, { "darkorange", 0xff8c00 }, { "darkorchid", 
    0x9932cc }, { "darkred", 0x8b0000 }, { "darksalmon", 0xe9967a }, { "darkseagreen", 0x8fbc8f }, 
    { "darkslateblue", 0x483d8b }, { "darkslategray", 0x2f4f4f }, { "darkslategrey", 0x2f4f4f }, { 
    "darkturquoise", 0x00ced1 }, { "darkviolet", 0x9400d3 }, { "deeppink", 0xff1493 }, { 
    "deepskyblue", 0x00bfff }, { "dimgray", 0x696969 }, { "dimgrey", 0x696969 }, { "dodgerblue", 
    0x1e90ff }, { "firebrick", 0xb22222 }, { "floralwhite", 0xfffaf0 }, { "forestgreen", 0x228b22 
    }, { "fuchsia", 0xff00ff }, { "gainsboro", 0xdcdcdc }, { "ghostwhite", 0xf8f8ff }, { "gold", 
    0xffd700 }, { "goldenrod", 0xdaa520 }, { "gray", 0x808080 }, { "green", 0x008000 }, { 
    "greenyellow", 0xadff2f }, { "grey", 0x808080 }, { "honeydew", 0xf0fff0 }, { "hotpink", 
    0xff69b4 }, { "indianred", 0xcd5c5c }, { "indigo", 0x4b0082 }, { "ivory", 0xfffff0 }, { 
    "khaki", 0xf0e68c }, { "lavender", 0xe6e6fa }, { "lavenderblush", 0xfff0f5 }, { "lawngreen", 
    0x7cfc00 }, { "lemonchiffon", 0xfffacd }, { "lightblue", 0xadd8e6 }, { "lightcoral", 0xf08080 
    }, { "lightcyan", 0xe0ffff }, { "lightgoldenrodyellow", 0xfafad2 }, { "lightgray", 0xd3d3d3 }, 
    { "lightgreen", 0x90ee90 }, { "lightgrey", 0xd3d3d3 }, { "lightpink", 0xffb6c1 }, { 
    "lightsalmon", 0xffa07a }, { "lightseagreen", 0x20b2aa }, { "lightskyblue", 0x87cefa }, { 
    "lightslategray", 0x778899 }, { "lightslategrey", 0x778899 }, { "lightsteelblue", 0xb0c4de }, { 
    "lightyellow", 0xffffe0 }, { "lime", 0x00ff00 }, { "limegreen", 0x32cd32 }, { "linen", 0xfaf0e6 
    }, { "magenta", 0xff00ff }, { "maroon", 0x800000 }, { "mediumaquamarine", 0x66cdaa }, { 
    "mediumblue", 0x0000cd }, { "mediumorchid", 0xba55d3 }, { "mediumpurple", 0x9370db }, { 
    "mediumseagreen", 0x3cb371 }, { "mediumslateblue", 0x7b68ee }, { "mediumspringgreen", 0x00fa9a 
    }, { "mediumturquoise", 0x48d1cc }, { "mediumvioletred", 0xc71585 }, { "midnightblue", 0x191970 
    }, { "mintcream", 0xf5fffa }, { "mistyrose", 0xffe4e1 }, { "moccasin", 0xffe4b5 }, { 
    "navajowhite", 0xffdead }, { "navy", 0x000080 }, { "oldlace", 0xfdf5e6 }, { "olive", 0x808000 
    }, { "olivedrab", 0x6b8e23 }, { "orange", 0xffa500 }, { "orangered", 0xff4500 }, { "orchid", 
    0xda70d6 }, { "palegoldenrod", 0xeee8aa }, { "palegreen", 0x98fb98 }, { "paleturquoise", 
    0xafeeee }, { "palevioletred", 0xdb7093 }, { "papayawhip", 0xffefd5 }, { "peachpuff", 0xffdab9 
    }, { "peru", 0xcd853f }, { "pink", 0xffc0cb }, { "plum", 0xdda0dd }, { "powderblue", 0xb0e0e6 
    }, { "purple", 0x800080 }, { "red", 0xff0000 }, { "rosybrown", 0xbc8f8f }, { "royalblue", 
    0x4169e1 }, { "saddlebrown", 0x8b4513 }, { "salmon", 0xfa8072 }, { "sandybrown", 0xf4a460 }, { 
    "seagreen", 0x2e8b57 }, { "seashell", 0xfff5ee }, { "sienna", 0xa0522d }, { "silver", 0xc0c0c0 
    }, { "skyblue", 0x87ceeb }, { "slateblue", 0x6a5acd }, { "slategray", 0x708090 }, { 
    "slategrey", 0x708090 }, { "snow", 0xfffafa }, { "springgreen", 0x00ff7f }, { "steelblue", 
    0x4682b4 }, { "tan", 0xd2b48c }, { "teal", 0x008080 }, { "thistle", 0xd8bfd8 }, { "tomato", 
    0xff6347 }, { "turquoise", 0x40e0d0 }, { "violet", 0xee82ee }, { "wheat", 0xf5deb3 }, { 
    "white", 0xffffff }, { "whitesmoke", 0xf5f5f5 }, { "yellow", 0xffff00 }, { "yellowgreen", 
    0x9acd32 },
};

static const struct { const char *name; unsigned cp; } entities[] = {
    { "AElig", 198 }, { "Aacute", 193 }, { "Acirc", 194 }, { "Agrave", 192 }, { "Aring", 197 }, { 
    "Atilde", 195 }, { "Auml", 196 }, { "Ccedil", 199 }, { "ETH", 208 }, { "Eacute", 201 }, { 
    "Ecirc", 202 }, { "Egrave", 200 }, { "Euml", 203 }, { "Iacute", 205 }, { "Icirc", 206 }, { 
    "Igrave", 204 }, { "Iuml", 207 }, { "Ntilde", 209 }, { "Oacute", 211 }, { "Ocirc", 212 }, { 
    "Ograve", 210 }, { "Oslash", 216 }, { "Otilde", 213 }, { "Ouml", 214 }, { "THORN", 222 }, { 
    "Uacute", 218 }, { "Ucirc", 219 }, { "Ugrave", 217 }, { "Uuml", 220 }, { "Yacute", 221 }, { 
    "aacute", 225 }, { "acirc", 226 }, { "acute", 180 }, { "aelig", 230 }, { "agrave", 224 }, { 
    "amp", 38 }, { "apos", 39 }, { "aring", 229 }, { "atilde", 227 }, { "auml", 228 }, { "brvbar", 
    166 }, { "ccedil", 231 }, { "cedil", 184 }, { "cent", 162 }, { "copy", 169 }, { "curren", 164 
    }, { "deg", 176 }, { "divide", 247 }, { "eacute", 233 }, { "ecirc", 234 }, { "egrave", 232 }, { 
    "eth", 240 }, { "euml", 235 }, { "frac12", 189 }, { "frac14", 188 }, { "frac34", 190 }, { "gt", 
    62 }, { "iacute", 237 }, { "icirc", 238 }, { "iexcl", 161 }, { "igrave", 236 }, { "iquest", 191 
    }, { "iuml", 239 }, { "laquo", 171 }, { "lt", 60 }, { "macr", 175 }, { "micro", 181 }, { 
    "middot", 183 }, { "nbsp", 160 }, { "not", 172 }, { "ntilde", 241 }, { "oacute", 243 }, { 
    "ocirc", 244 }, { "ograve", 242 }, { "ordf", 170 }, { "ordm", 186 }, { "oslash", 248 }, { 
    "otilde", 245 }, { "ouml", 246 }, { "para", 182 }, { "plusmn", 177 }, { "pound", 163 }, { 
    "quot", 34 }, { "raquo", 187 }, { "reg", 174 }, { "sect", 167 }, { "shy", 173 }, { "sup1", 185 
    }, { "sup2", 178 }, { "sup3", 179 }, { "szlig", 223 }, { "thorn", 254 }, { "times", 215 }, { 
    "uacute", 250 }, { "ucirc", 251 }, { "ugrave", 249 }, { "uml", 168 }, { "uuml", 252 }, { 
    "yacute", 253 }, { "yen", 165 }, { "yuml", 255 }
};

static bool
in_list(const char *tag, const char *const *list)
{
    for (size_t i = 0; list[i]; i++)
        if (list[i][0] == tag[0] && strcmp(tag, list[i]) == 0)
            return true;
    return false;
}

static const char *const elements[] = {
    "a", "abbr", "acronym", "address", "area", "b", "base", "bdo", "big", "blockquote", "body",
    "br", "button", "caption", "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl",
    "dt", "em", "fieldset", "form", "h1", "h2", "h3", "h4", "h5", "h6", "head", "hr", "html", "i",
    "img", "input", "ins", "kbd", "label", "legend", "li", "link", "map", "meta", "noscript",
    "object", "ol", "optgroup", "option", "p", "param", "pre", "q", "samp", "script", "select",
    "small", "span", "strong", "style", "sub", "sup", "table", "tbody", "td", "textarea", "tfoot",
    "th", "thead", "title", "tr", "tt", "ul", "var", "applet", "basefont", "center", "dir", "font",
    "frame", "frameset", "iframe", "isindex", "menu", "noframes", "s", "strike", "u", "nobr",
    "x-sigsep", "x-tab", NULL };
static const char *const tricks[] = { "bgsound", "embed", "listing", "plaintext", "xmp", NULL };
static const char *const text_style_tags[] = { "body", "font", "table", "tr", "th", "td", "big",
                                               "small", "basefont", "marquee", "span", "p", "div",
                                               "a", NULL };
static const char *const whitespace_tags[] = { "br", "div", "li", "th", "td", "dt", "dd", "p", "hr",
                                               "blockquote", "pre", "embed", "listing", "plaintext",
                                               "xmp", "title", "h1", "h2", "h3", "h4", "h5", "h6",
                                               NULL };
static const char *const uri_tags[] = { "body", "table", "tr", "td", "a", "area", "link", "img",
                                        "frame", "iframe", "embed", "script", "form", "base",
                                        "bgsound", "meta", NULL };

static bool
ok_attribute(const char *tag, const char *name)
{
    static const struct { const char *tag; const char *const names[7]; } ok[] = {
        { "basefont", { "color", "face", "size", NULL } },
        { "body", { "text", "bgcolor", "link", "alink", "vlink", "background", NULL } },
        { "font", { "color", "face", "size", NULL } },
        { "marquee", { "bgcolor", "background", NULL } },
        { "table", { "bgcolor", "style", NULL } },
        { "td", { "bgcolor", "style", NULL } },
        { "th", { "bgcolor", "style", NULL } },
        { "tr", { "bgcolor", "style", NULL } },
        { "span", { "style", NULL } },
        { "p", { "style", NULL } },
        { "div", { "style", NULL } },
        { "a", { "style", NULL } },
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strcmp(ok[i].tag, tag) == 0)
            return in_list(name, ok[i].names);
    return false;
}

/* ------------------------------------------------------------ colors */

/* HTML.pm's name_to_rgb: "#rrggbb" or "invalid" into out (8 bytes). */
static void
name_to_rgb(const char *in, char out[16])
{
    char c[128];
    size_t n = 0;
    const char *p = in;
    while (*p && isspace((unsigned char)*p))
        p++;
    for (; *p && n + 1 < sizeof(c); p++)
        c[n++] = (char)tolower((unsigned char)*p);
    while (n && isspace((unsigned char)c[n - 1]))
        n--;
    c[n] = '\0';
    for (size_t i = 0; i < sizeof(colors) / sizeof(colors[0]); i++)
        if (strcmp(colors[i].name, c) == 0) {
            snprintf(out, 16, "#%06lx", colors[i].rgb);
            return;
        }
    const size_t *ov;
    bool hexish = true;
    for (size_t i = 0; i < n && hexish; i++)
        hexish = c[i] == '#' || isxdigit((unsigned char)c[i]);
    if (!hexish && rules_re_exec(rules_re("rgb\\([\\d%, ]*\\)", PCRE2_CASELESS), c, n, 0, &ov) <= 0) {
        str_copy(out, "invalid", 16);
        return;
    }
    char h[16] = "";
    int rc;
    if ((rc = rules_re_exec(rules_re("rgb\\((\\d+)%,\\s*(\\d+)%,\\s*(\\d+)%\\s*\\)", PCRE2_CASELESS), c,
                            n, 0, &ov)) > 0) {
        snprintf(c, sizeof(c), "#%02lx%02lx%02lx", (long)(strtol(c + ov[2], NULL, 10) / 100.0 * 255),
                 (long)(strtol(c + ov[4], NULL, 10) / 100.0 * 255),
                 (long)(strtol(c + ov[6], NULL, 10) / 100.0 * 255));
        n = strlen(c);
    }
    if ((rc = rules_re_exec(rules_re("rgb\\((\\d+),\\s*(\\d+),\\s*(\\d+)\\s*\\)", PCRE2_CASELESS), c, n,
                            0, &ov)) > 0) {
        char t[64];
        snprintf(t, sizeof(t), "#%02lx%02lx%02lx", strtol(c + ov[2], NULL, 10),
                 strtol(c + ov[4], NULL, 10), strtol(c + ov[6], NULL, 10));
        str_copy(c, t, sizeof(c));
        n = strlen(c);
    }
    if (c[0] != '#') {
        str_copy(out, "invalid", 16);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n && k < 15; i++)
        if (isxdigit((unsigned char)c[i]))
            h[k++] = c[i];
    h[k] = '\0';
    if (k > 6)
        h[k = 6] = '\0';
    if (k > 3 && k < 6)
        h[k = 3] = '\0';
    while (k % 3)
        h[k++] = '0';
    h[k] = '\0';
    if (k == 3) {
        char d[8] = { h[0], h[0], h[1], h[1], h[2], h[2], 0 };
        snprintf(out, 16, "#%s", d);
        return;
    }
    snprintf(out, 16, "#%s", h);
}

/* ------------------------------------------------------------ the state */

struct style {
    char tag[24];
    char fg[16], bg[16];
    int size;
    char display[32], visibility[32];
};

struct piece { char *s; bool ws, invisible; };

struct hp {
    struct rhtml *R;
    struct style st[MAX_STYLE];
    int nst;
    int basefont;
    struct piece *text;
    size_t ntext, captext;
    char *anchor_last;
    char *base_href;
};

static int *
inside_slot(struct rhtml *R, const char *tag, bool create)
{
    for (size_t i = 0; i < R->ninside; i++)
        if (R->inside[i].tag[0] == tag[0] && strcmp(R->inside[i].tag, tag) == 0)
            return &R->inside[i].count;
    if (!create)
        return NULL;
    R->inside = xrealloc(R->inside, (R->ninside + 1) * sizeof(*R->inside));
    str_copy(R->inside[R->ninside].tag, tag, sizeof(R->inside[0].tag));
    R->inside[R->ninside].count = 0;
    return &R->inside[R->ninside++].count;
}

int
rhtml_inside(const struct rhtml *R, const char *tag, bool *exists_r)
{
    for (size_t i = 0; i < R->ninside; i++)
        if (strcmp(R->inside[i].tag, tag) == 0) {
            if (exists_r)
                *exists_r = true;
            return R->inside[i].count;
        }
    if (exists_r)
        *exists_r = false;
    return 0;
}

static bool
inside(struct hp *P, const char *tag)
{
    int *s = inside_slot(P->R, tag, false);
    return s && *s > 0;
}

static void
list_add(char ***v, size_t *n, const char *s, size_t l)
{
    *v = xrealloc(*v, (*n + 1) * sizeof(char *));
    (*v)[(*n)++] = xstrndup(s, l);
}

/* ------------------------------------------------------------ the links */

struct puri { char *scheme, *authority, *path, *query, *fragment; };

static char *
part(const char *s, const size_t *ov, int k)
{
    if (ov[2 * k] == PCRE2_UNSET)
        return NULL;
    return xstrndup(s + ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
}

static void
parse_uri(const char *u, struct puri *p)
{
    memset(p, 0, sizeof(*p));
    const size_t *ov;
    if (rules_re_exec(rules_re("^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\\?([^#]*))?(?:#(.*))?",
                               PCRE2_DOTALL), u, strlen(u), 0, &ov) <= 0)
        return;
    p->scheme = part(u, ov, 1);
    p->authority = part(u, ov, 2);
    p->path = part(u, ov, 3);
    p->query = part(u, ov, 4);
    p->fragment = part(u, ov, 5);
    if (p->path == NULL)
        p->path = xstrdup("");
}

static void
puri_free(struct puri *p)
{
    free(p->scheme);
    free(p->authority);
    free(p->path);
    free(p->query);
    free(p->fragment);
}

static char *
remove_dot_segments(const char *in)
{
    struct sb out = { 0 };
    sb_add(&out, "", 0);
    char *input = xstrdup(in);
    if (strncmp(input, "../", 3) == 0)
        memmove(input, input + 2, strlen(input + 2) + 1);
    else if (strncmp(input, "./", 2) == 0)
        memmove(input, input + 1, strlen(input + 1) + 1);
    char *s = input;
    while (*s) {
        if (strncmp(s, "/./", 3) == 0) {
            s += 2;
        } else if (strcmp(s, "/.") == 0) {
            s[1] = '\0';
        } else if (strncmp(s, "/../", 4) == 0 || strcmp(s, "/..") == 0) {
            /* $output =~ s@/?[^/]*$@@ */
            char *slash = strrchr(out.p, '/');
            out.n = slash ? (size_t)(slash - out.p) : 0;
            out.p[out.n] = '\0';
            if (s[3] == '/')
                s += 3;
            else {
                s += 2;
                s[0] = '/';
            }
        } else {
            size_t k = *s == '/' ? 1 : 0;
            while (s[k] && s[k] != '/')
                k++;
            sb_add(&out, s, k);
            s += k;
        }
    }
    free(input);
    return out.p;
}

/* HTML.pm's target_uri: r against the base href */
static char *
target_uri(const char *base, const char *r)
{
    struct puri R, B, T = { 0 };
    parse_uri(r, &R);
    parse_uri(base, &B);
    if (R.scheme && B.scheme && strcmp(R.scheme, B.scheme) == 0) {
        free(R.scheme);
        R.scheme = NULL;
    }
    if (R.scheme) {
        T.scheme = xstrdup(R.scheme);
        T.authority = R.authority ? xstrdup(R.authority) : NULL;
        T.path = remove_dot_segments(R.path);
        T.query = R.query ? xstrdup(R.query) : NULL;
    } else {
        if (R.authority) {
            T.authority = xstrdup(R.authority);
            T.path = remove_dot_segments(R.path);
            T.query = R.query ? xstrdup(R.query) : NULL;
        } else {
            if (R.path[0] == '\0') {
                T.path = xstrdup(B.path ? B.path : "");
                T.query = R.query ? xstrdup(R.query) : B.query ? xstrdup(B.query) : NULL;
            } else {
                if (R.path[0] == '/') {
                    T.path = remove_dot_segments(R.path);
                } else {
                    struct sb m = { 0 };
                    sb_add(&m, "", 0);
                    if (B.authority && (B.path == NULL || B.path[0] == '\0')) {
                        sb_str(&m, "/");
                        sb_str(&m, R.path);
                    } else {
                        const char *bp = B.path ? B.path : "";
                        const char *slash = strrchr(bp, '/');
                        if (slash)
                            sb_add(&m, bp, (size_t)(slash - bp) + 1);
                        sb_str(&m, R.path);
                    }
                    T.path = remove_dot_segments(m.p);
                    free(m.p);
                }
                T.query = R.query ? xstrdup(R.query) : NULL;
            }
            T.authority = B.authority ? xstrdup(B.authority) : NULL;
        }
        T.scheme = B.scheme ? xstrdup(B.scheme) : NULL;
    }
    T.fragment = R.fragment ? xstrdup(R.fragment) : NULL;
    struct sb out = { 0 };
    sb_add(&out, "", 0);
    const size_t *ov;
    if (T.scheme && T.scheme[0]) {
        sb_str(&out, T.scheme);
        sb_str(&out, ":");
    } else if (T.authority) {
        if (rules_re_exec(rules_re("^www\\d*\\.", PCRE2_CASELESS), T.authority, strlen(T.authority),
                          0, &ov) > 0)
            sb_str(&out, "http:");
        else if (rules_re_exec(rules_re("^ftp\\d*\\.", PCRE2_CASELESS), T.authority,
                               strlen(T.authority), 0, &ov) > 0)
            sb_str(&out, "ftp:");
    }
    if (T.authority) {
        sb_str(&out, "//");
        sb_str(&out, T.authority);
    }
    sb_str(&out, T.path ? T.path : "");
    if (T.query) {
        sb_str(&out, "?");
        sb_str(&out, T.query);
    }
    if (T.fragment) {
        sb_str(&out, "#");
        sb_str(&out, T.fragment);
    }
    puri_free(&R);
    puri_free(&B);
    puri_free(&T);
    return out.p;
}

static char *
canon_uri(struct hp *P, const char *u)
{
    /* leading and trailing white space (and NBSP) off; at most 8192 */
    size_t n = strlen(u);
    size_t b = 0;
    for (;;) {
        if (b < n && isspace((unsigned char)u[b]))
            b++;
        else if (b + 1 < n && (unsigned char)u[b] == 0xc2 && (unsigned char)u[b + 1] == 0xa0)
            b += 2;
        else
            break;
    }
    for (;;) {
        if (n > b && isspace((unsigned char)u[n - 1]))
            n--;
        else if (n >= b + 2 && (unsigned char)u[n - 2] == 0xc2 && (unsigned char)u[n - 1] == 0xa0)
            n -= 2;
        else
            break;
    }
    if (n - b > MAX_URI_LENGTH) {
        P->R->uri_truncated = true;
        n = b + MAX_URI_LENGTH;
    }
    return xstrndup(u + b, n - b);
}

static struct rhtml_uri *
uri_slot(struct rhtml *R, const char *uri)
{
    for (size_t i = 0; i < R->nuri; i++)
        if (strcmp(R->uri[i].uri, uri) == 0)
            return &R->uri[i];
    R->uri = xrealloc(R->uri, (R->nuri + 1) * sizeof(*R->uri));
    struct rhtml_uri *u = &R->uri[R->nuri++];
    memset(u, 0, sizeof(*u));
    u->uri = xstrdup(uri);
    return u;
}

static void
push_uri(struct hp *P, const char *type, const char *raw)
{
    char *uri = canon_uri(P, raw);
    const size_t *ov;
    if (uri[0] == '\0') {
        free(uri);
        return;
    }
    char *target;
    if (rules_re_exec(rules_re("^(?:data|mailto|file|cid|tel):", PCRE2_CASELESS), uri, strlen(uri),
                      0, &ov) > 0)
        target = xstrdup(uri);
    else
        target = target_uri(P->base_href ? P->base_href : "", uri);
    if (target[0]) {
        struct rhtml_uri *u = uri_slot(P->R, target);
        u->types |= rhtml_type_bit(type);
    }
    free(target);
    free(uri);
}

/* ------------------------------------------------------------ tokens */

struct attr { char *name, *value; };

static const char *
attr_get(const struct attr *a, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(a[i].name, name) == 0)
            return a[i].value;
    return NULL;
}

static void
display_text(struct hp *P, const char *t, size_t n, bool ws, bool invisible)
{
    struct sb s = { 0 };
    sb_add(&s, "", 0);
    if (ws) {
        /* trim a trailing space off the previous piece if it was neither
         * whitespace nor invisible */
        if (P->ntext) {
            struct piece *last = &P->text[P->ntext - 1];
            size_t ll = strlen(last->s);
            if (!last->ws && !last->invisible && ll && last->s[ll - 1] == ' ')
                last->s[ll - 1] = '\0';
        }
        sb_add(&s, t, n);
    } else {
        /* s/[ \t\n\r\f\x0b]+|\xc2\xa0/ /gs (it only gets shorter) */
        if (s.cap < n + 1) {
            s.cap = n + 1;
            s.p = xrealloc(s.p, s.cap);
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)t[i];
            if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == 0x0b) {
                while (i + 1 < n && strchr(" \t\n\r\f\x0b", t[i + 1]) && t[i + 1])
                    i++;
                s.p[s.n++] = ' ';
            } else if (ch == 0xc2 && i + 1 < n && (unsigned char)t[i + 1] == 0xa0) {
                s.p[s.n++] = ' ';
                i++;
            } else {
                s.p[s.n++] = (char)ch;
            }
        }
        s.p[s.n] = '\0';
        if (P->ntext && !invisible && P->text[P->ntext - 1].ws && s.n && s.p[0] == ' ') {
            memmove(s.p, s.p + 1, s.n);
            s.n--;
        }
    }
    if (P->ntext == P->captext) {
        P->captext = P->captext ? P->captext * 2 : 64;
        P->text = xrealloc(P->text, P->captext * sizeof(*P->text));
    }
    P->text[P->ntext++] = (struct piece){ s.p, ws, invisible };
}

static void
html_whitespace(struct hp *P, const char *tag)
{
    if (strcmp(tag, "br") == 0 || strcmp(tag, "div") == 0)
        display_text(P, "\n", 1, true, false);
    else if (in_list(tag, (const char *const[]){ "li", "th", "td", "dt", "dd", "embed", "h1", "h2",
                                                  "h3", "h4", "h5", "h6", NULL }) ||
             (tag[0] == 'h' && isdigit((unsigned char)tag[1]) && tag[2] == '\0'))
        display_text(P, " ", 1, true, false);
    else if (in_list(tag, (const char *const[]){ "p", "hr", "blockquote", "pre", "listing",
                                                  "plaintext", "xmp", "title", NULL }))
        display_text(P, "\n\n", 2, true, false);
}

static void
close_tag(struct hp *P, const char *tag)
{
    bool open = false;
    for (int i = 0; i < P->nst && !open; i++)
        open = strcmp(P->st[i].tag, tag) == 0;
    if (!open)
        return;
    while (P->nst > 0) {
        struct style cur = P->st[--P->nst];
        if (strcmp(cur.tag, tag) == 0)
            break;
    }
    if (P->nst == 0)            /* the default style never goes */
        P->nst = 1;
}

static void
close_table_tag(struct hp *P, const char *tag)
{
    bool open = false;
    for (int i = 0; i < P->nst && !open; i++)
        open = strcmp(P->st[i].tag, tag) == 0;
    if (!open)
        return;
    while (P->nst > 1) {
        const char *top = P->st[P->nst - 1].tag;
        if ((strcmp(tag, "td") == 0 && (strcmp(top, "font") == 0 || strcmp(top, "td") == 0)) ||
            (strcmp(tag, "tr") == 0 && (strcmp(top, "font") == 0 || strcmp(top, "td") == 0 ||
                                       strcmp(top, "tr") == 0)))
            P->nst--;
        else
            break;
    }
}

static void
text_style(struct hp *P, const char *tag_in, const struct attr *a, size_t na, int num)
{
    const char *tag = strcmp(tag_in, "th") == 0 ? "td" : tag_in;
    if (num != 1) {
        if (strcmp(tag, "body") != 0)
            close_tag(P, tag);
        return;
    }
    const char *sz = attr_get(a, na, "size");
    const size_t *ov;
    if (strcmp(tag, "basefont") == 0 && sz &&
        rules_re_exec(rules_re("^\\s*(\\d+)", 0), sz, strlen(sz), 0, &ov) > 0) {
        P->basefont = (int)strtol(sz + ov[2], NULL, 10);
        return;
    }
    if (strcmp(tag, "td") == 0 || strcmp(tag, "tr") == 0)
        close_table_tag(P, tag);
    if (P->nst >= MAX_STYLE)
        return;
    struct style nw = P->st[P->nst - 1];
    str_copy(nw.tag, tag, sizeof(nw.tag));
    if (strcmp(tag, "big") == 0 || strcmp(tag, "small") == 0) {
        nw.size += tag[0] == 'b' ? 1 : -1;
        P->st[P->nst++] = nw;
        return;
    }
    for (size_t i = 0; i < na; i++) {
        const char *name = a[i].name, *v = a[i].value;
        if (!ok_attribute(tag, name))
            continue;
        if (strcmp(name, "text") == 0 || strcmp(name, "color") == 0) {
            name_to_rgb(v, nw.fg);
        } else if (strcmp(name, "size") == 0) {
            if (rules_re_exec(rules_re("^\\s*([+-]\\d+)", 0), v, strlen(v), 0, &ov) > 0)
                nw.size = P->basefont + (int)strtol(v + ov[2], NULL, 10);
            else if (rules_re_exec(rules_re("^\\s*(\\d+)", 0), v, strlen(v), 0, &ov) > 0)
                nw.size = (int)strtol(v + ov[2], NULL, 10);
        } else if (strcmp(name, "style") == 0) {
            char *style = xstrdup(v);
            for (char *save = NULL, *s = strtok_r(style, ";", &save); s; s = strtok_r(NULL, ";", &save)) {
                int rc;
                if ((rc = rules_re_exec(rules_re("^\\s*(background-)?color:\\s*(.+?)\\s*$", PCRE2_CASELESS),
                                        s, strlen(s), 0, &ov)) > 0) {
                    bool bgc = ov[2] != PCRE2_UNSET;
                    char value[128];
                    size_t vl = ov[5] - ov[4];
                    snprintf(value, sizeof(value), "%.*s", (int)(vl < 127 ? vl : 127), s + ov[4]);
                    for (char *q = value; *q; q++)
                        *q = (char)tolower((unsigned char)*q);
                    const size_t *ov2;
                    if (rules_re_exec(rules_re("\\s*!\\s*important$", 0), value, strlen(value), 0, &ov2) > 0)
                        value[ov2[0]] = '\0';
                    char *dst = bgc ? nw.bg : nw.fg;
                    if (strstr(value, "rgb")) {
                        long rgb[3] = { 0, 0, 0 };
                        int k = 0;
                        char digits[128];
                        size_t d = 0;
                        for (char *q = value; *q && d + 1 < sizeof(digits); q++)
                            if (isdigit((unsigned char)*q) || *q == ',')
                                digits[d++] = *q;
                        digits[d] = '\0';
                        for (char *q = digits; k < 3; k++) {
                            rgb[k] = strtol(q, NULL, 10);
                            if (rgb[k] > 255)
                                rgb[k] = 255;
                            char *comma = strchr(q, ',');
                            if (comma == NULL) {
                                k++;
                                break;
                            }
                            q = comma + 1;
                        }
                        snprintf(dst, 16, "#%02lx%02lx%02lx", rgb[0], rgb[1], rgb[2]);
                    } else if (strcmp(value, "inherit") == 0) {
                    } else if (strcmp(value, "transparent") == 0) {
                        str_copy(dst, "transparent", 16);
                    } else {
                        name_to_rgb(value, dst);
                    }
                } else if ((rc = rules_re_exec(rules_re("^\\s*background:\\s*(.+?)\\s*$", 0), s,
                                               strlen(s), 0, &ov)) > 0) {
                    /* the colors of the bottom layer's values, the first valid one */
                    char bgv[256];
                    size_t bl = ov[3] - ov[2];
                    snprintf(bgv, sizeof(bgv), "%.*s", (int)(bl < 255 ? bl : 255), s + ov[2]);
                    for (char *q = bgv; *q; q++)
                        *q = (char)tolower((unsigned char)*q);
                    char *layer = strrchr(bgv, ',');
                    layer = layer ? layer + 1 : bgv;
                    for (char *save2 = NULL, *tok = strtok_r(layer, " ", &save2); tok;
                         tok = strtok_r(NULL, " ", &save2)) {
                        char col[16];
                        name_to_rgb(tok, col);
                        if (strcmp(col, "invalid") != 0) {
                            str_copy(nw.bg, col, sizeof(nw.bg));
                            break;
                        }
                    }
                } else if ((rc = rules_re_exec(rules_re("^\\s*([a-z_-]+)\\s*:\\s*(\\S.*?)\\s*$",
                                                        PCRE2_CASELESS), s, strlen(s), 0, &ov)) > 0) {
                    size_t kl = ov[3] - ov[2], vl = ov[5] - ov[4];
                    if (kl == 7 && strncmp(s + ov[2], "display", 7) == 0)
                        snprintf(nw.display, sizeof(nw.display), "%.*s", (int)(vl < 31 ? vl : 31), s + ov[4]);
                    else if (kl == 10 && strncmp(s + ov[2], "visibility", 10) == 0)
                        snprintf(nw.visibility, sizeof(nw.visibility), "%.*s", (int)(vl < 31 ? vl : 31),
                                 s + ov[4]);
                }
            }
            free(style);
            if (strcmp(nw.bg, "transparent") == 0)
                str_copy(nw.bg, P->st[P->nst - 1].bg, sizeof(nw.bg));
            if (strcmp(nw.fg, "transparent") == 0)
                str_copy(nw.fg, nw.bg, sizeof(nw.fg));
        } else if (strcmp(name, "bgcolor") == 0) {
            /* HTML.pm converts the attribute and sets nothing with it:
             * a bgcolor attribute does not change the text's background */
        } else if (strcmp(name, "face") == 0 || strcmp(name, "link") == 0 ||
                   strcmp(name, "alink") == 0 || strcmp(name, "vlink") == 0 ||
                   strcmp(name, "background") == 0) {
            /* kept by HTML.pm as a style value nothing reads */
        }
        if (nw.size > P->R->max_size)
            P->R->max_size = nw.size;
        else if (nw.size < P->R->min_size)
            P->R->min_size = nw.size;
    }
    P->st[P->nst++] = nw;
}

static bool
font_invisible(struct hp *P)
{
    const struct style *s = &P->st[P->nst - 1];
    size_t fl = strlen(s->fg), bl = strlen(s->bg);
    if (strcmp(s->fg + (fl > 6 ? fl - 6 : 0), s->bg + (bl > 6 ? bl - 6 : 0)) == 0) {
        P->R->font_low_contrast = true;
        return true;
    }
    const size_t *ov;
    unsigned r1, g1, b1, r2, g2, b2;
    if (rules_re_exec(rules_re("^\\#?[0-9a-f]{6}$", 0), s->fg, fl, 0, &ov) > 0 &&
        rules_re_exec(rules_re("^\\#?[0-9a-f]{6}$", 0), s->bg, bl, 0, &ov) > 0 &&
        sscanf(s->fg + (s->fg[0] == '#'), "%2x%2x%2x", &r1, &g1, &b1) == 3 &&
        sscanf(s->bg + (s->bg[0] == '#'), "%2x%2x%2x", &r2, &g2, &b2) == 3) {
        double r = (double)r1 - r2, g = (double)g1 - g2, b = (double)b1 - b2;
        double d = sqrt(pow(0.2126 * r, 2) + pow(0.7152 * g, 2) + pow(0.0722 * b, 2));
        if (d < 12) {
            P->R->font_low_contrast = true;
            return true;
        }
    }
    if (strcmp(s->fg, "invalid") == 0 || strcmp(s->bg, "invalid") == 0) {
        P->R->font_invalid_color = true;
        return true;
    }
    if (s->size <= 1)
        return true;
    if (strcasecmp(s->display, "none") == 0 || strcasecmp(s->visibility, "hidden") == 0)
        return true;
    return false;
}

static bool
punct_or_space(unsigned char ch)
{
    /* [\s\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e] */
    return isspace(ch) || (ch >= 0x21 && ch <= 0x2f) || (ch >= 0x3a && ch <= 0x40) ||
           (ch >= 0x5b && ch <= 0x60) || (ch >= 0x7b && ch <= 0x7e);
}

static void
html_text(struct hp *P, const char *t, size_t n)
{
    struct rhtml *R = P->R;
    if (inside(P, "script")) {
        list_add(&R->script, &R->nscript, t, n);
        return;
    }
    if (inside(P, "style"))
        return;
    if (inside(P, "a")) {
        struct rhtml_uri *u = uri_slot(R, P->anchor_last ? P->anchor_last : "");
        if (u->nanchor == 0) {
            u->anchor = xcalloc(1, sizeof(char *));
            u->anchor[0] = xstrdup("");
            u->nanchor = 1;
        }
        char **last = &u->anchor[u->nanchor - 1];
        size_t ol = strlen(*last);
        *last = xrealloc(*last, ol + n + 1);
        memcpy(*last + ol, t, n);
        (*last)[ol + n] = '\0';
    }
    if (inside(P, "title") && R->ntitle) {
        char **last = &R->title[R->ntitle - 1];
        size_t ol = strlen(*last);
        *last = xrealloc(*last, ol + n + 1);
        memcpy(*last + ol, t, n);
        (*last)[ol + n] = '\0';
    }
    bool invisible = false, blank = true;
    for (size_t i = 0; i < n && blank; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch == 0xc2 && i + 1 < n && (unsigned char)t[i + 1] == 0xa0)
            i++;
        else if (!(ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == 0x0b))
            blank = false;
    }
    if (!blank)
        invisible = font_invisible(P);
    if (P->ntext && n) {
        const char *prev = P->text[P->ntext - 1].s;
        size_t pl = strlen(prev);
        if (!punct_or_space((unsigned char)t[0]) && pl && !punct_or_space((unsigned char)prev[pl - 1]))
            R->obfuscation++;
        /* backhair: a word of 1-7 cut between two pieces */
        size_t a = 0;
        while (a < pl && a < 8 && !punct_or_space((unsigned char)prev[pl - 1 - a]))
            a++;
        size_t b = 0;
        while (b < n && b < 8 && !punct_or_space((unsigned char)t[b]))
            b++;
        if (a >= 1 && a <= 7 && b >= 1 && b <= 7 &&
            (a == pl || punct_or_space((unsigned char)prev[pl - 1 - a])) &&
            (b == n || punct_or_space((unsigned char)t[b]))) {
            char key[16];
            snprintf(key, sizeof(key), "%zu_%zu", a, b);
            bool seen = false;
            for (size_t i = 0; i < R->nbackhair && !seen; i++)
                seen = strcmp(R->backhair[i], key) == 0;
            if (!seen)
                list_add(&R->backhair, &R->nbackhair, key, strlen(key));
        }
    }
    display_text(P, t, n, false, invisible);
}

static void
html_tests(struct hp *P, const char *tag, const struct attr *a, size_t na)
{
    struct rhtml *R = P->R;
    const char *v;
    const size_t *ov;
    if (strcmp(tag, "font") == 0 && (v = attr_get(a, na, "face")) != NULL &&
        rules_re_exec(rules_re("^\\s*[\"'.]?[a-z ][a-z -]*[a-z]\\d?[\"']?(?:,\\s*[\"']?[a-z][a-z -]*[a-z]\\d?[\"']?)*;?$",
                               PCRE2_CASELESS), v, strlen(v), 0, &ov) <= 0)
        R->font_face_bad = true;
    if (strcmp(tag, "img") == 0 && inside(P, "a")) {
        struct rhtml_uri *u = uri_slot(R, P->anchor_last ? P->anchor_last : "");
        if (u->nanchor) {
            char **last = &u->anchor[u->nanchor - 1];
            size_t ol = strlen(*last);
            *last = xrealloc(*last, ol + 7);
            memcpy(*last + ol, "<img>\n", 7);
        }
    }
    const char *w = attr_get(a, na, "width"), *h = attr_get(a, na, "height");
    if (strcmp(tag, "img") == 0 && w && h) {
        double width = 0, height = 0;
        if (rules_re_exec(rules_re("^(\\d+)(\\%)?$", 0), w, strlen(w), 0, &ov) > 0) {
            width = strtod(w + ov[2], NULL);
            if (ov[4] != PCRE2_UNSET)
                width *= 8;
        }
        if (rules_re_exec(rules_re("^(\\d+)(\\%)?$", 0), h, strlen(h), 0, &ov) > 0) {
            height = strtod(h + ov[2], NULL);
            if (ov[4] != PCRE2_UNSET)
                height *= 6;
        }
        if (width <= 0)
            width = 200;
        if (height <= 0)
            height = 200;
        R->image_area += width * height;
    }
    if (strcmp(tag, "form") == 0 && (v = attr_get(a, na, "action")) != NULL && strcasestr(v, "mailto:"))
        R->form_action_mailto = true;
    if (strcmp(tag, "object") == 0 || strcmp(tag, "embed") == 0)
        R->embeds = true;
    if (strcmp(tag, "a") == 0) {
        free(P->anchor_last);
        v = attr_get(a, na, "href");
        P->anchor_last = v ? canon_uri(P, v) : xstrdup("");
        struct rhtml_uri *u = uri_slot(R, P->anchor_last);
        u->anchor = xrealloc(u->anchor, (u->nanchor + 1) * sizeof(char *));
        u->anchor[u->nanchor++] = xstrdup("");
    }
    if (strcmp(tag, "title") == 0)
        list_add(&R->title, &R->ntitle, "", 0);
    const char *he = attr_get(a, na, "http-equiv"), *content = attr_get(a, na, "content");
    int rc;
    if (strcmp(tag, "meta") == 0 && he && content && strcasestr(he, "content-type") &&
        (rc = rules_re_exec(rules_re("\\bcharset\\s*=\\s*[\"']?([^\"']+)", PCRE2_CASELESS), content,
                            strlen(content), 0, &ov)) > 0) {
        struct sb cs = { 0 };
        if (R->charsets) {
            sb_str(&cs, R->charsets);
            sb_str(&cs, " ");
            free(R->charsets);
        }
        sb_add(&cs, content + ov[2], ov[3] - ov[2]);
        R->charsets = cs.p;
    }
}

static void
html_uri(struct hp *P, const char *tag, struct attr *a, size_t na)
{
    const char *v;
    if (in_list(tag, (const char *const[]){ "body", "table", "tr", "td", NULL })) {
        if ((v = attr_get(a, na, "background")) != NULL)
            push_uri(P, tag, v);
    } else if (in_list(tag, (const char *const[]){ "a", "area", "link", NULL })) {
        const char *href = NULL;
        for (size_t i = 0; i < na; i++)
            if (strstr(a[i].name, "/href") && strlen(a[i].name) > 5)
                href = a[i].value;          /* badly formed: "x/href" */
        if (href == NULL)
            href = attr_get(a, na, "href");
        if (href) {
            /* the UTF-8 BOM out */
            struct sb h = { 0 };
            sb_add(&h, "", 0);
            for (const char *p = href; *p; p++) {
                if ((unsigned char)p[0] == 0xef && (unsigned char)p[1] == 0xbb &&
                    (unsigned char)p[2] == 0xbf) {
                    p += 2;
                    continue;
                }
                sb_add(&h, p, 1);
            }
            push_uri(P, tag, h.p);
            free(h.p);
        }
        if ((v = attr_get(a, na, "data-saferedirecturl")) != NULL)
            push_uri(P, tag, v);
    } else if (in_list(tag, (const char *const[]){ "img", "frame", "iframe", "embed", "script",
                                                    "bgsound", NULL })) {
        const char *src = NULL;
        for (size_t i = 0; i < na; i++)
            if (strstr(a[i].name, "/src") && strlen(a[i].name) > 4)
                src = a[i].value;
        if (src == NULL)
            src = attr_get(a, na, "src");
        if (src)
            push_uri(P, tag, src);
    } else if (strcmp(tag, "form") == 0) {
        if ((v = attr_get(a, na, "action")) != NULL)
            push_uri(P, tag, v);
    } else if (strcmp(tag, "base") == 0) {
        if ((v = attr_get(a, na, "href")) != NULL && v[0]) {
            char *uri = canon_uri(P, v);
            push_uri(P, tag, uri);
            const size_t *ov;
            if (rules_re_exec(rules_re("^(?:https?|ftp):/{0,2}", PCRE2_CASELESS), uri, strlen(uri), 0,
                              &ov) > 0) {
                if (rules_re_exec(rules_re("^([a-z]+:/{0,2}[^/]+/.*?)[^/\\.]+\\.[^/\\.]{2,4}$",
                                           PCRE2_CASELESS), uri, strlen(uri), 0, &ov) > 0)
                    uri[ov[3]] = '\0';
                size_t ul = strlen(uri);
                free(P->base_href);
                P->base_href = xmalloc(ul + 2);
                memcpy(P->base_href, uri, ul + 1);
                if (ul == 0 || uri[ul - 1] != '/') {
                    P->base_href[ul] = '/';
                    P->base_href[ul + 1] = '\0';
                }
            }
            free(uri);
        }
    } else if (strcmp(tag, "meta") == 0) {
        const char *he = attr_get(a, na, "http-equiv"), *content = attr_get(a, na, "content");
        const size_t *ov;
        if (he && content && strcasestr(he, "refresh") &&
            rules_re_exec(rules_re("\\burl\\s*=", PCRE2_CASELESS), content, strlen(content), 0, &ov) > 0) {
            char *u = xstrdup(content);
            if (rules_re_exec(rules_re("^.*\\burl\\s*=\\s*", PCRE2_CASELESS | PCRE2_DOTALL), u,
                              strlen(u), 0, &ov) > 0)
                memmove(u, u + ov[1], strlen(u + ov[1]) + 1);
            if (rules_re_exec(rules_re("\\s*;.*", PCRE2_CASELESS), u, strlen(u), 0, &ov) > 0)
                u[ov[0]] = '\0';
            push_uri(P, tag, u);
            free(u);
        }
    }
}

static void
html_tag(struct hp *P, const char *tag, struct attr *a, size_t na, int num)
{
    struct rhtml *R = P->R;
    const size_t *ov;
    bool ns = strchr(tag, ':') &&
              rules_re_exec(rules_re("^(?:o|st\\d):[\\w-]+/?$", 0), tag, strlen(tag), 0, &ov) > 0;
    bool element = in_list(tag, elements);
    int *slot = inside_slot(R, tag, false);
    if (element || ns) {
        R->elements++;
        if (slot == NULL)
            R->elements_seen++;
    }
    R->tags++;
    if (slot == NULL)
        R->tags_seen++;
    slot = inside_slot(R, tag, true);
    *slot += num;
    if (*slot < 0) {
        *slot = 0;
        R->closed_extra++;
    }
    if (ns)
        return;
    if (element || in_list(tag, tricks)) {
        if (in_list(tag, text_style_tags))
            text_style(P, tag, a, na, num);
        if (in_list(tag, whitespace_tags))
            html_whitespace(P, tag);
        if (num == 1) {
            if (in_list(tag, uri_tags))
                html_uri(P, tag, a, na);
            html_tests(P, tag, a, na);
        } else {
            if (strcmp(tag, "html") == 0)
                R->closed_html = true;
            if (strcmp(tag, "body") == 0)
                R->closed_body = true;
        }
    }
}

/* HTML::Parser's entity decoding: &name; (or &name before a non-word
 * character), &#nnn; and &#xhh; */
static _Thread_local bool entity_bytes;     /* set per parse: see rhtml_parse's chars */
static _Thread_local bool *entity_flag;

static void
decode_entities(struct sb *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '&') {
            /* the text up to the next entity at once */
            const char *amp = memchr(s + i, '&', n - i);
            size_t run = amp ? (size_t)(amp - (s + i)) : n - i;
            sb_add(out, s + i, run);
            i += run - 1;
            continue;
        }
        size_t k = i + 1;
        unsigned long cp = 0;
        bool ok = false;
        if (k < n && s[k] == '#') {
            k++;
            bool hex = k < n && (s[k] == 'x' || s[k] == 'X');
            if (hex)
                k++;
            size_t d = k;
            while (k < n && (hex ? isxdigit((unsigned char)s[k]) : isdigit((unsigned char)s[k])) &&
                   k - d < 10)
                cp = cp * (hex ? 16 : 10) + (unsigned long)(hex ? (isdigit((unsigned char)s[k]) ? s[k] - '0'
                                                               : (tolower((unsigned char)s[k]) - 'a' + 10))
                                                               : s[k] - '0'), k++;
            ok = k > d && cp > 0 && cp <= 0x10ffff;
            if (ok && k < n && s[k] == ';')
                k++;
        } else {
            size_t d = k;
            while (k < n && isalnum((unsigned char)s[k]) && k - d < 10)
                k++;
            size_t nl = k - d;
            for (size_t e = 0; nl && e < sizeof(entities) / sizeof(entities[0]); e++) {
                /* the longest known name at the start */
                size_t el = strlen(entities[e].name);
                if (el <= nl && strncmp(s + d, entities[e].name, el) == 0 &&
                    (el == nl ? true : false)) {
                    cp = entities[e].cp;
                    ok = true;
                    break;
                }
            }
            if (ok && k < n && s[k] == ';')
                k++;
        }
        if (!ok) {
            sb_add(out, "&", 1);
            continue;
        }
        if (entity_bytes && cp >= 128 && cp < 256) {
            char b = (char)cp;          /* a byte in a byte string */
            sb_add(out, &b, 1);
        } else {
            char u[4];
            size_t ul = utf8_encode(u, cp);
            sb_add(out, u, ul);
            if (cp >= 256 && entity_flag)
                *entity_flag = true;
        }
        i = k - 1;
    }
}

static bool
literal_tag(const char *t)
{
    return strcmp(t, "script") == 0 || strcmp(t, "style") == 0 || strcmp(t, "xmp") == 0 ||
           strcmp(t, "iframe") == 0 || strcmp(t, "textarea") == 0 || strcmp(t, "plaintext") == 0;
}

static void
emit_text(struct hp *P, const char *s, size_t n, bool decode)
{
    if (n == 0)
        return;
    if (!decode) {
        html_text(P, s, n);
        return;
    }
    struct sb d = { 0 };
    sb_add(&d, "", 0);
    decode_entities(&d, s, n);
    html_text(P, d.p, d.n);
    free(d.p);
}

/* One tag at s[0] == '<' (start or end): its end in *end_r, or false when
 * it is no tag (then it is text). */
static bool
parse_tag(struct hp *P, const char *s, size_t n, size_t *end_r, char *literal, size_t lsize)
{
    size_t i = 1;
    bool endtag = false;
    if (i < n && s[i] == '/') {
        endtag = true;
        i++;
    }
    if (i >= n || !isalpha((unsigned char)s[i]))
        return false;
    size_t ns = i;
    while (i < n && !isspace((unsigned char)s[i]) && s[i] != '>' && s[i] != '/')
        i++;
    char tag[64];
    size_t tl = i - ns;
    if (tl >= sizeof(tag))
        tl = sizeof(tag) - 1;
    for (size_t k = 0; k < tl; k++)
        tag[k] = (char)tolower((unsigned char)s[ns + k]);
    tag[tl] = '\0';
    struct attr a[64];
    size_t na = 0;
    for (;;) {
        while (i < n && (isspace((unsigned char)s[i]) || s[i] == '/'))
            i++;
        if (i >= n)
            goto fail;
        if (s[i] == '>') {
            i++;
            break;
        }
        size_t an = i;
        while (i < n && !isspace((unsigned char)s[i]) && s[i] != '=' && s[i] != '>')
            i++;
        size_t anl = i - an;
        while (i < n && isspace((unsigned char)s[i]))
            i++;
        const char *vs = NULL;
        size_t vl = 0;
        if (i < n && s[i] == '=') {
            i++;
            while (i < n && isspace((unsigned char)s[i]))
                i++;
            if (i < n && (s[i] == '"' || s[i] == '\'')) {
                char q = s[i++];
                vs = s + i;
                while (i < n && s[i] != q)
                    i++;
                if (i >= n)
                    goto fail;
                vl = (size_t)(s + i - vs);
                i++;
            } else {
                vs = s + i;
                while (i < n && !isspace((unsigned char)s[i]) && s[i] != '>')
                    i++;
                vl = (size_t)(s + i - vs);
            }
        }
        if (anl == 0)
            continue;
        if (na < 64 && !endtag) {
            char *name = xstrndup(s + an, anl);
            for (char *q = name; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            bool dup = false;
            for (size_t k = 0; k < na && !dup; k++)
                dup = strcmp(a[k].name, name) == 0;
            if (dup) {
                free(name);
                continue;
            }
            struct sb v = { 0 };
            sb_add(&v, "", 0);
            if (vs)
                decode_entities(&v, vs, vl);
            else
                sb_str(&v, name);
            a[na].name = name;
            a[na++].value = v.p;
        }
    }
    html_tag(P, tag, a, na, endtag ? -1 : 1);
    for (size_t k = 0; k < na; k++) {
        free(a[k].name);
        free(a[k].value);
    }
    if (!endtag && literal_tag(tag))
        str_copy(literal, tag, lsize);
    *end_r = i;
    return true;
fail:
    for (size_t k = 0; k < na; k++) {
        free(a[k].name);
        free(a[k].value);
    }
    return false;
}

/* ------------------------------------------------------------ a part */

/* Latin-1 bytes (those not in a valid UTF-8 sequence) as UTF-8 */
static char *
upgrade(const char *s, size_t n)
{
    struct sb o = { 0 };
    sb_add(&o, "", 0);
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        size_t k = ch < 0x80 ? 1 : (ch & 0xe0) == 0xc0 ? 2 : (ch & 0xf0) == 0xe0 ? 3
                 : (ch & 0xf8) == 0xf0 ? 4 : 0;
        if (k > 1 && i + k <= n && g_utf8_validate(s + i, (gssize)k, NULL)) {
            sb_add(&o, s + i, k);
            i += k;
            continue;
        }
        if (ch < 0x80) {
            sb_add(&o, s + i, 1);
        } else {
            char u[4];
            size_t ul = utf8_encode(u, ch);
            sb_add(&o, u, ul);
        }
        i++;
    }
    return o.p;
}

char *
rhtml_upgrade(const char *s, size_t n)
{
    return upgrade(s, n);
}

struct rhtml *
rhtml_parse(const char *in, size_t inlen, bool chars)
{
    struct rhtml *R = xcalloc(1, sizeof(*R));
    /* entities: bytes in a byte string, else UTF-8 (flagged when one
     * needs it) */
    entity_bytes = !chars;
    entity_flag = &R->flagged;
    R->flagged = chars;
    struct hp P = { .R = R, .basefont = 3 };
    R->html = true;
    R->min_size = R->max_size = 3;
    P.st[0] = (struct style){ "default", "#000000", "#ffffff", 3, "", "" };
    P.nst = 1;
    /* the length of the text in characters */
    for (size_t i = 0; i < inlen; i++)
        R->length += !chars || ((unsigned char)in[i] & 0xc0) != 0x80;
    /* s/&nbsp;/ /g; s/<(\w+)\s*\/>/<$1>/g; curly double quotes to '"' */
    struct sb t = { 0 };
    sb_add(&t, "", 0);
    for (size_t i = 0; i < inlen; i++) {
        if (in[i] != '&' && in[i] != '<' && (unsigned char)in[i] != 0xe2 && in[i] != '\0') {
            /* a run of bytes none of the cases below starts with, at once */
            size_t k = i + 1;
            while (k < inlen && in[k] != '&' && in[k] != '<' && (unsigned char)in[k] != 0xe2 &&
                   in[k] != '\0')
                k++;
            sb_add(&t, in + i, k - i);
            i = k - 1;
            continue;
        }
        if (strncmp(in + i, "&nbsp;", 6) == 0) {
            sb_add(&t, " ", 1);
            i += 5;
            continue;
        }
        if ((unsigned char)in[i] == 0xe2 && i + 2 < inlen && (unsigned char)in[i + 1] == 0x80 &&
            ((unsigned char)in[i + 2] == 0x9c || (unsigned char)in[i + 2] == 0x9d)) {
            sb_add(&t, "\"", 1);
            i += 2;
            continue;
        }
        if (in[i] == '<') {
            size_t k = i + 1;
            while (k < inlen && (isalnum((unsigned char)in[k]) || in[k] == '_'))
                k++;
            size_t w = k;
            while (k < inlen && isspace((unsigned char)in[k]))
                k++;
            if (w > i + 1 && k + 1 < inlen && in[k] == '/' && in[k + 1] == '>') {
                sb_add(&t, in + i, w - i);
                sb_add(&t, ">", 1);
                i = k + 1;
                continue;
            }
        }
        sb_add(&t, in + i, 1);
    }
    const char *s = t.p;
    size_t n = t.n;
    size_t i = 0, text_start = 0;
    char literal[32] = "";
    while (i < n) {
        if (literal[0]) {
            /* literal text up to </tag */
            size_t ll = strlen(literal), k = i;
            for (; k + 2 + ll <= n; k++)
                if (s[k] == '<' && s[k + 1] == '/' && strncasecmp(s + k + 2, literal, ll) == 0 &&
                    (k + 2 + ll == n || isspace((unsigned char)s[k + 2 + ll]) || s[k + 2 + ll] == '>'))
                    break;
            if (k + 2 + ll > n || strcmp(literal, "plaintext") == 0)
                k = n;
            bool dec = strcmp(literal, "script") != 0 && strcmp(literal, "style") != 0;
            emit_text(&P, s + i, k - i, dec);
            literal[0] = '\0';
            i = text_start = k;
            continue;
        }
        if (s[i] != '<') {
            const char *lt = memchr(s + i, '<', n - i);
            i = lt ? (size_t)(lt - s) : n;
            continue;
        }
        size_t end = 0;
        const char *close = NULL;
        if (i + 3 < n && strncmp(s + i, "<!--", 4) == 0) {
            close = memmem(s + i + 4, n - i - 4, "-->", 3);
            end = close ? (size_t)(close - s) + 3 : n;
            emit_text(&P, s + text_start, i - text_start, true);
            list_add(&R->comment, &R->ncomment, s + i, end - i);
            i = text_start = end;
            continue;
        }
        if (i + 8 < n && strncmp(s + i, "<![CDATA[", 9) == 0) {
            close = memmem(s + i + 9, n - i - 9, "]]>", 3);
            end = close ? (size_t)(close - s) + 3 : n;
            emit_text(&P, s + text_start, i - text_start, true);
            emit_text(&P, s + i + 9, (close ? (size_t)(close - s) : n) - i - 9, false);
            i = text_start = end;
            continue;
        }
        if (i + 2 < n && s[i + 1] == '!' && !isalpha((unsigned char)s[i + 2]) && s[i + 2] != '-') {
            /* "<!" and no name: HTML::Parser's bogus comment */
            close = memchr(s + i, '>', n - i);
            end = close ? (size_t)(close - s) + 1 : n;
            emit_text(&P, s + text_start, i - text_start, true);
            list_add(&R->comment, &R->ncomment, s + i, end - i);
            i = text_start = end;
            continue;
        }
        if (i + 1 == n || (s[i + 1] == '/' && (i + 2 == n || isspace((unsigned char)s[i + 2]) ||
                                               s[i + 2] == '>'))) {
            /* "<" at the end, "</ x>", "</>": HTML::Parser's comments */
            close = memchr(s + i, '>', n - i);
            end = close ? (size_t)(close - s) + 1 : n;
            emit_text(&P, s + text_start, i - text_start, true);
            list_add(&R->comment, &R->ncomment, s + i, end - i);
            i = text_start = end;
            continue;
        }
        if (i + 1 < n && (s[i + 1] == '!' || s[i + 1] == '?')) {
            close = memchr(s + i, '>', n - i);
            end = close ? (size_t)(close - s) + 1 : n;
            emit_text(&P, s + text_start, i - text_start, true);
            if (close == NULL)          /* unterminated at the end: a comment */
                list_add(&R->comment, &R->ncomment, s + i, end - i);
            if (s[i + 1] == '!' && end - i > 9 && strncasecmp(s + i, "<!doctype", 9) == 0) {
                R->elements++;
                R->tags++;
                *inside_slot(R, "!doctype", true) = 0;
            }
            i = text_start = end;
            continue;
        }
        size_t tstart = i;
        char lit[32] = "";
        /* text before the tag goes first, as the parser reports it */
        if (i + 1 < n && (isalpha((unsigned char)s[i + 1]) ||
                          (s[i + 1] == '/' && i + 2 < n && isalpha((unsigned char)s[i + 2])))) {
            emit_text(&P, s + text_start, tstart - text_start, true);
            text_start = tstart;
            if (parse_tag(&P, s + i, n - i, &end, lit, sizeof(lit))) {
                i = text_start = tstart + end;
                str_copy(literal, lit, sizeof(literal));
                continue;
            }
            /* a tag the text ends inside of: HTML::Parser reports the
             * rest as a comment at its eof() */
            list_add(&R->comment, &R->ncomment, s + i, n - i);
            i = text_start = n;
            break;
        }
        i++;
    }
    emit_text(&P, s + text_start, n - text_start, true);
    /* unclosed <style> and <script> close at the end (bug 7437) */
    /* the rendered text: every piece */
    struct sb out = { 0 };
    sb_add(&out, "", 0);
    for (size_t k = 0; k < P.ntext; k++) {
        sb_str(&out, P.text[k].s);
        free(P.text[k].s);
    }
    free(P.text);
    if (R->flagged && !chars) {
        /* a character over 255 made the text characters: the bytes of
         * the other entities become their characters */
        char *u = upgrade(out.p, out.n);
        free(out.p);
        out.p = u;
        out.n = strlen(u);
    }
    entity_flag = NULL;
    R->text = out.p;
    R->text_len = out.n;
    free(P.anchor_last);
    free(P.base_href);
    free(t.p);
    /* what rendered() adds: lengths in characters, spaces */
    size_t nchars = 0, spaces = 0;
    for (size_t k = 0; k < out.n; k++) {
        unsigned char ch = (unsigned char)out.p[k];
        if (!R->flagged || (ch & 0xc0) != 0x80)
            nchars++;
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == 0x0b || ch == '\f')
            spaces++;
    }
    R->html_length = nchars;
    R->non_space_len = nchars - spaces;
    return R;
}

void
rhtml_free(struct rhtml **rp)
{
    struct rhtml *R = *rp;
    if (R == NULL)
        return;
    for (size_t i = 0; i < R->nuri; i++) {
        free(R->uri[i].uri);
        for (size_t k = 0; k < R->uri[i].nanchor; k++)
            free(R->uri[i].anchor[k]);
        free(R->uri[i].anchor);
    }
    free(R->uri);
    free(R->inside);
    for (size_t i = 0; i < R->ntitle; i++)
        free(R->title[i]);
    free(R->title);
    for (size_t i = 0; i < R->ncomment; i++)
        free(R->comment[i]);
    free(R->comment);
    for (size_t i = 0; i < R->nscript; i++)
        free(R->script[i]);
    free(R->script);
    for (size_t i = 0; i < R->nbackhair; i++)
        free(R->backhair[i]);
    free(R->backhair);
    free(R->charsets);
    free(R->text);
    free(R);
    *rp = NULL;
}

unsigned
rhtml_type_bit(const char *type)
{
    static const char *const types[] = { "a", "area", "link", "img", "frame", "iframe", "embed",
                                         "script", "bgsound", "form", "base", "meta", "body",
                                         "table", "tr", "td", NULL };
    for (unsigned i = 0; types[i]; i++)
        if (strcmp(types[i], type) == 0)
            return 1u << i;
    return 1u << 20;
}
