/*
 * rules_relay.c -- the Received fields of a message read into relays the
 * way SpamAssassin's Mail::SpamAssassin::Message::Metadata::Received does
 * (4.0, Apache License 2.0; its formats and their order written anew here
 * with PCRE2): each field is matched against the formats of the MTAs it
 * knows, in the same order, to find the address, reverse DNS, HELO, "by",
 * ident, envelope sender, id and authentication of the handover; fields
 * it skips (local handovers, mail fetchers) are skipped here too. Without
 * trusted_networks (Moat has none to give it), the trusted part is what
 * SpamAssassin infers: relays from private addresses or with an
 * authentication, up to the first that has neither; trusted is internal.
 * The results: the X-Spam-Relays-* strings, the Received indexes the
 * ALL-TRUSTED ... ALL-EXTERNAL requests cut at, and the relays for the
 * relay evals.
 *
 * One room though long: Received.pm's formats are one ordered chain whose
 * order decides which format reads a field.
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

/* Constants.pm's IP_ADDRESS, LOCALHOST and IP_PRIVATE. */
#define V4 "(?:1\\d\\d|2[0-4]\\d|25[0-5]|[1-9]\\d|\\d)"
#define IP4 V4 "\\." V4 "\\." V4 "\\." V4
#define H4 "[a-f0-9]{1,4}"
#define IP "(?i:(?:\\b(?<!:)" IP4 "\\b" \
    "|(?:IPv6:|(?<![a-f0-9:]))(?:(?:(?:" H4 ":){6}|::(?:" H4 ":){0,5}|(?:" H4 ":){1,5}:" \
    "|" H4 "::(?:" H4 ":){1,4}|(?:" H4 ":){2}:(?:" H4 ":){1,3}|(?:" H4 ":){3}:(?:" H4 ":){1,2}" \
    "|(?:" H4 ":){4}:" H4 ":)" IP4 \
    "|(?:" H4 ":){7}" H4 "|:(?::" H4 "){1,7}|(?:" H4 ":){1,7}:|" H4 ":(?::" H4 "){1,6}" \
    "|(?:" H4 ":){2}(?::" H4 "){1,5}|(?:" H4 ":){3}(?::" H4 "){1,4}|(?:" H4 ":){4}(?::" H4 "){1,3}" \
    "|(?:" H4 ":){5}(?::" H4 "){1,2}|(?:" H4 ":){6}:" H4 "|::)(?![a-f0-9:])))"
#define MAPPED "(?:(?:0{1,4}:){5}ffff:|::(?:0{1,4}:){0,4}ffff:|(?:0{1,4}:){1,4}:ffff:" \
    "|0{1,4}::(?:0{1,4}:){1,3}ffff:|(?:0{1,4}:){2}:0{1,2}:ffff:|(?:0{1,4}:){3}:0:ffff:" \
    "|(?:0{1,4}:){4}:ffff:)"
#define LOOP6 "(?:0{1,4}:){7}0{0,3}1|:(?::0{1,4}){0,6}:0{0,3}1|0{1,4}:(?::0{1,4}){0,5}:0{0,3}1" \
    "|(?:0{1,4}:){2}(?::0{1,4}){0,4}:0{0,3}1|(?:0{1,4}:){3}(?::0{1,4}){0,3}:0{0,3}1" \
    "|(?:0{1,4}:){4}(?::0{1,4}){0,2}:0{0,3}1|(?:0{1,4}:){5}(?::0{1,4}){0,1}:0{0,3}1" \
    "|(?:0{1,4}:){6}:0{0,3}1"
#define LH "(?i:(?:localhost(?:\\.localdomain)?|\\b(?<!:)127\\.0\\.0\\.1\\b" \
    "|(?:IPv6:|(?<![a-f0-9:]))(?:" MAPPED "127\\.0\\.0\\.1|" LOOP6 ")(?![a-f0-9:])))"
#define PRIV4 "(?:10|127|169\\.254|172\\.(?:1[6-9]|2[0-9]|3[01])|192\\.168" \
    "|100\\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]))"
#define PRIVATE "(?i:^(?:" PRIV4 "\\..*|(?:IPv6:|(?<![a-f0-9:]))(?:" MAPPED PRIV4 "\\..*" \
    "|fe[89ab][0-9a-f]:.*|" LOOP6 ")(?![a-f0-9:])))"

/* The line being read and the last match. */
struct pl {
    char *s;
    size_t n;
    const size_t *ov;
    int rc;
};

static bool
M(struct pl *P, const char *re)
{
    P->rc = rules_re_exec(rules_re(re, 0), P->s, P->n, 0, &P->ov);
    return P->rc > 0;
}

static bool
Mi(struct pl *P, const char *re)
{
    P->rc = rules_re_exec(rules_re(re, PCRE2_CASELESS), P->s, P->n, 0, &P->ov);
    return P->rc > 0;
}

/* M for a pattern that starts "^(\S+) \(" (or "[", or "^\S+( \(..."):
 * its first token is the line's up to its first white space, so the byte
 * after that space must be c. Most lines of the formats tried late have
 * another: the pattern is not run. */
static bool
MT(struct pl *P, char c, const char *re)
{
    size_t sp = 0;
    while (sp < P->n && !strchr(" \t\n\v\f\r", P->s[sp]))
        sp++;
    if (sp == 0 || sp + 1 >= P->n || P->s[sp] != ' ' || P->s[sp + 1] != c)
        return false;
    return M(P, re);
}

/* Whether s[0..n) holds lit[0..l): memchr for its first byte that is not
 * a space (most of the literals looked for begin with one, and a line has
 * dozens), then the whole compared there. glibc's memmem set up its
 * search for each of the 30 or so literals a line is searched for, which
 * cost more than the PCRE2 calls of the parse. */
static bool
find(const char *s, size_t n, const char *lit, size_t l)
{
    if (l == 0)
        return true;
    if (l > n)
        return false;
    size_t k = 0;
    while (k + 1 < l && lit[k] == ' ')
        k++;
    const char *p = s + k, *last = s + (n - l) + k;     /* where lit[k] may be */
    while (p <= last && (p = memchr(p, lit[k], (size_t)(last - p) + 1)) != NULL) {
        if (memcmp(p - k, lit, l) == 0)
            return true;
        p++;
    }
    return false;
}

/* Whether the line holds lit: a literal a pattern cannot match without,
 * looked for before the pattern runs (most lines lack it, and a search
 * costs a fraction of a PCRE2 call). */
static bool
has(const struct pl *P, const char *lit)
{
    return find(P->s, P->n, lit, strlen(lit));
}

/* The same, ASCII letters of either case (as a caseless pattern folds
 * them; lit is lower case): in a lower-case copy of the line when it is
 * short enough for the stack. */
static bool
hasi(const struct pl *P, const char *lit)
{
    size_t l = strlen(lit);
    char low[2048];
    if (P->n <= sizeof(low)) {
        for (size_t i = 0; i < P->n; i++) {
            char ch = P->s[i];
            low[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        return find(low, P->n, lit, l);
    }
    for (size_t i = 0; i + l <= P->n; i++) {
        size_t k = 0;
        for (; k < l; k++) {
            char ch = P->s[i + k];
            if ((ch >= 'A' && ch <= 'Z' ? ch + 32 : ch) != lit[k])
                break;
        }
        if (k == l)
            return true;
    }
    return false;
}

/* Capture k of the last match into out ("" when it did not take part). */
static void
cap(const struct pl *P, int k, char *out, size_t size)
{
    out[0] = '\0';
    if (k >= P->rc || P->ov[2 * k] == PCRE2_UNSET)
        return;
    size_t l = P->ov[2 * k + 1] - P->ov[2 * k];
    snprintf(out, size, "%.*s", (int)(l < size ? l : size - 1), P->s + P->ov[2 * k]);
}

static bool
capped(const struct pl *P, int k)
{
    return k < P->rc && P->ov[2 * k] != PCRE2_UNSET;
}

/* s/re/with/ once (first match); true when it matched. */
static bool
S(struct pl *P, const char *re, unsigned flags, const char *with)
{
    const size_t *ov;
    if (rules_re_exec(rules_re(re, flags), P->s, P->n, 0, &ov) <= 0)
        return false;
    size_t a = ov[0], b = ov[1], wl = strlen(with);
    char *t = xmalloc(P->n - (b - a) + wl + 1);
    memcpy(t, P->s, a);
    memcpy(t + a, with, wl);
    memcpy(t + a + wl, P->s + b, P->n - b + 1);
    free(P->s);
    P->s = t;
    P->n = P->n - (b - a) + wl;
    return true;
}

/* s/re/with/g */
static void
Sg(char *s, size_t size, const char *re, char with)
{
    const size_t *ov;
    char out[1024];
    size_t o = 0, off = 0, n = strlen(s);
    void *r = rules_re(re, PCRE2_CASELESS);
    while (off <= n && rules_re_exec(r, s, n, off, &ov) > 0) {
        for (size_t i = off; i < ov[0] && o + 2 < sizeof(out); i++)
            out[o++] = s[i];
        if (with && o + 2 < sizeof(out))
            out[o++] = with;
        if (ov[1] == ov[0]) {
            if (ov[0] < n && o + 2 < sizeof(out))
                out[o++] = s[ov[0]];
            off = ov[0] + 1;
        } else {
            off = ov[1];
        }
    }
    for (size_t i = off; i < n && o + 2 < sizeof(out); i++)
        out[o++] = s[i];
    out[o] = '\0';
    str_copy(s, out, size);
}

/* s/[\s\000\#\[\]\(\)\<\>\|]/!/gs (PCRE2's \s: space, \t, \n, \v, \f, \r) */
static void
strip_bad(char *s)
{
    for (; *s; s++)
        if (strchr(" \t\n\v\f\r#[]()<>|", *s))
            *s = '!';
}

enum { PARSED, SKIPPED, UNPARSEABLE };

/* Received.pm's parse_received_line: PARSED with r filled in, SKIPPED for
 * a handover it ignores, UNPARSEABLE. */
static int
parse_line(const char *line, struct relay *r, bool *fetcher)
{
    struct pl P = { 0 };
    /* s/\s+/ /g; s/^ //; s/ $//; 1 while s/\s?;$//; */
    size_t n = strlen(line);
    P.s = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)line[i])) {
            while (i + 1 < n && isspace((unsigned char)line[i + 1]))
                i++;
            P.s[P.n++] = ' ';
        } else {
            P.s[P.n++] = line[i];
        }
    }
    P.s[P.n] = '\0';
    if (P.n && P.s[0] == ' ')
        memmove(P.s, P.s + 1, P.n--);
    if (P.n && P.s[P.n - 1] == ' ')
        P.s[--P.n] = '\0';
    for (;;) {
        if (P.n && P.s[P.n - 1] == ';') {
            P.s[--P.n] = '\0';
            if (P.n && isspace((unsigned char)P.s[P.n - 1]))
                P.s[--P.n] = '\0';
            continue;
        }
        break;
    }
    char ip[256] = "", helo[256] = "", rdns[256] = "", by[256] = "", id[256] = "", ident[256] = "";
    char envfrom[256] = "", auth[256] = "", sub[512], tmp[256];
    bool have_envfrom = false, looked_up = false;

    /* ^\(?from , caseless: without PCRE2, as the checks below that a
     * pattern's literal is there (every line runs them) */
    if (strncasecmp(P.s + (P.s[0] == '('), "from ", 5) != 0)
        goto skip;
    if (has(&P, "with local for") && M(&P, "\\bwith local for\\b"))
        goto skip;
    if (memchr(P.s, ';', P.n) && Mi(&P, "^from (\\S+) by [^\\s;]+ ?;")) {
        cap(&P, 1, tmp, sizeof(tmp));
        struct pl Q = { tmp, strlen(tmp), NULL, 0 };
        if (!M(&Q, "^\\[[\\d.]+\\]$"))
            goto skip;
    }
    S(&P, "[\\s;]+(?:(?:Mon|T(?:ue|hu)|Wed|Fri|S(?:at|un)), )?\\d+ (?:J(?:an|u[nl])|Feb|Ma[ry]"
          "|A(?:pr|ug)|Sep|Oct|Nov|Dec) \\d+ \\d+:\\d+(?::\\d+)? \\S+$", 0, "");
    if (has(&P, ")by "))
        S(&P, "\\)by ", 0, ") by ");
    if (has(&P, " id ") && M(&P, " id <?([^\\s<>;]{3,})"))
        cap(&P, 1, id, sizeof(id));
    if (has(&P, "helo=") && M(&P, "\\bhelo=([-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/]+)(?:[^-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/]|$)"))
        cap(&P, 1, helo, sizeof(helo));
    else if ((has(&P, "HELO ") || has(&P, "EHLO ")) && M(&P, "\\b(?:HELO|EHLO) ([-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/]+)(?:[^-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/]|$)"))
        cap(&P, 1, helo, sizeof(helo));
    if (has(&P, " by ") && M(&P, " by (\\S+)(?:[^-A-Za-z0-9\\;\\.]|$)"))
        cap(&P, 1, by, sizeof(by));

    /* authentication */
    if (has(&P, " by ") && Mi(&P, " with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)")) {
        cap(&P, 1, auth, sizeof(auth));
    } else if (has(&P, " by mx.google.com with ESMTPS id ") && M(&P, " by mx\\.google\\.com with ESMTPS id [a-z0-9]{1,4}sm[0-9]{2,9}[a-z]{3}\\.[0-9]{1,3}\\.[0-9]{4}\\.(?:[0-6][0-9]\\.){4}[0-6][0-9]") &&
               M(&P, "\\(version=([^ ]+) cipher=([^\\)]+)\\)")) {
        char v[64], ci[128];
        cap(&P, 1, v, sizeof(v));
        cap(&P, 2, ci, sizeof(ci));
        snprintf(auth, sizeof(auth), "GMail - transport=%s cipher=%s", v, ci);
    } else if (has(&P, " (AUTH: ") && M(&P, "^from .*?(?:\\]\\)|\\)\\]) \\(AUTH: (LOGIN|PLAIN|DIGEST-MD5|CRAM-MD5) \\S+(?:, .*?)?\\) by ")) {
        cap(&P, 1, auth, sizeof(auth));
    } else if (has(&P, "authenticated") &&
               M(&P, "^from .*?(?:\\](?: \\([^)]*\\))?\\)|\\)\\]) .*?\\(.*?authenticated.*?\\).*? by")) {
        str_copy(auth, "Sendmail", sizeof(auth));
    } else if (has(&P, "mail.gmx.") && M(&P, "from \\S* \\((?:HELO|EHLO) (\\S*)\\) \\[(" IP ")\\] by (mail\\.gmx\\.(?:net|com)) \\([^\\)]+\\) with ((?:ESMTP|SMTP))")) {
        char a3[128], a4[32];
        cap(&P, 3, a3, sizeof(a3));
        cap(&P, 4, a4, sizeof(a4));
        snprintf(auth, sizeof(auth), "GMX (%s / %s)", a4, a3);
    } else if (has(&P, " (authenticated as ") &&
               M(&P, "\\) by .+ \\(\\d{1,2}\\.\\d\\.\\d{3}(?:\\.\\d{1,3})?\\) \\(authenticated as .+\\) id ")) {
        str_copy(auth, "CriticalPath", sizeof(auth));
    } else if (has(&P, ") (Authenticated sender: ") && M(&P, "\\) \\(Authenticated sender: \\S+\\) by \\S+ \\(([^\\)]+)\\) with ")) {
        char a1[128];
        cap(&P, 1, a1, sizeof(a1));
        if (strcmp(a1, "Postfix") == 0)
            str_copy(auth, a1, sizeof(auth));
        else
            snprintf(auth, sizeof(auth), "Postfix (%s)", a1);
    } else if (has(&P, "CommuniGate Pro ") && M(&P, "CommuniGate Pro (HTTP|SMTP|XIMSS|IMAP)") &&
               has(&P, " (account ")) {
        str_copy(auth, "Communigate", sizeof(auth));
    } else if (has(&P, " with Microsoft Exchange Server HTTP-DAV") &&
               M(&P, " with Microsoft Exchange Server HTTP-DAV\\b")) {
        str_copy(auth, "HTTP-DAV", sizeof(auth));
    } else if (has(&P, " by ") && hasi(&P, " (via http") && Mi(&P, " \\(via (HTTP.?)\\)(?: |;|$)")) {
        cap(&P, 1, auth, sizeof(auth));
    }

    if (strncmp(P.s, "from ", 5) == 0 && S(&P, "^from ", 0, "")) {
        if ((hasi(&P, "return-path") || hasi(&P, "envelope-")) &&
            Mi(&P, "(?:return-path:? |envelope-(?:sender|from)[ =])(\\S+)\\b")) {
            cap(&P, 1, envfrom, sizeof(envfrom));
            have_envfrom = true;
        }
        if (has(&P, " authenticated user ") &&
            M(&P, " \\((?:SquirrelMail|NaSMail) authenticated user ")) {
            if (M(&P, "(" IP ")\\b(?![.-]).{10,80}by (\\S+) with HTTP")) {
                cap(&P, 1, ip, sizeof(ip));
                cap(&P, 2, by, sizeof(by));
                goto enough;
            }
        }
        if (has(&P, "aol.com") && has(&P, "with HTTP (WebMailUI)")) {
            if (M(&P, "(" IP ") by (\\S+) \\(" IP "\\) with HTTP \\(WebMailUI\\)")) {
                cap(&P, 1, ip, sizeof(ip));
                cap(&P, 2, by, sizeof(by));
                goto enough;
            }
        }
        if (has(&P, " SMTPSVC")) {
            if (M(&P, "^(\\S*) \\(\\[(" IP ")\\][^\\)]{0,40}\\) by (\\S+) with Microsoft SMTPSVC")) {
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 3, by, sizeof(by));
                goto enough;
            }
            if (M(&P, "^mail pickup service by (\\S+) with Microsoft SMTPSVC$"))
                goto skip;
        } else if ((has(&P, " with Microsoft SMTP Server ") || has(&P, " with mapi id ")) &&
                   M(&P, " with (?:Microsoft SMTP Server|mapi id) (?:\\([^\\)]+\\) )?\\d+\\.\\d+\\.\\d+\\.\\d+(?:$| )")) {
            if (MT(&P, '(', "^(\\S+) \\(\\[?(" IP ")(?:%[A-Z0-9._~-]*)?\\]?\\) by (\\S+) ")) {
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 3, by, sizeof(by));
                id[0] = '\0';
                goto enough;
            }
        } else if (has(&P, "[XMail ")) {
            if (MT(&P, '(', "^(\\S+) \\((\\[?" IP "\\]?)(?::\\d+)\\) by (\\S+)(?: \\(\\S+\\))? with \\[XMail")) {
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 3, by, sizeof(by));
                if (M(&P, " id <(\\S+)>"))
                    cap(&P, 1, id, sizeof(id));
                if (M(&P, " from <(\\S+)>")) {
                    cap(&P, 1, envfrom, sizeof(envfrom));
                    have_envfrom = true;
                }
                goto enough;
            }
        } else if (has(&P, "(ecelerity") && M(&P, "\\(ecelerity\\b")) {
            if (M(&P, "^\\(\\[(" IP "):\\d+\\] helo=(\\S+)\\) by (\\S+) ")) {
                cap(&P, 1, ip, sizeof(ip));
                cap(&P, 2, helo, sizeof(helo));
                cap(&P, 3, by, sizeof(by));
                goto enough;
            }
            if (M(&P, "^\\S+ \\(\\[(" IP "):\\d+\\]\\) by (\\S+) ")) {
                cap(&P, 1, ip, sizeof(ip));
                cap(&P, 2, by, sizeof(by));
                goto enough;
            }
        } else if (has(&P, "Exim")) {
            if (M(&P, "\\bwith local(?:-\\S+)? "))
                goto skip;
            if (M(&P, "^\\[(" IP ")\\] \\((.*?)\\) by (\\S+) ")) {
                cap(&P, 1, ip, sizeof(ip));
                cap(&P, 2, sub, sizeof(sub));
                cap(&P, 3, by, sizeof(by));
                goto exim_sub;
            }
            if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\](.*?)\\) by (\\S+) ")) {
                cap(&P, 1, rdns, sizeof(rdns));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 3, sub, sizeof(sub));
                cap(&P, 4, by, sizeof(by));
                str_copy(helo, rdns, sizeof(helo));
                goto exim_sub;
            }
            if (MT(&P, '[', "^(\\S+) \\[(" IP ")\\](:\\d+)? by (\\S+) ")) {
                cap(&P, 1, rdns, sizeof(rdns));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 4, by, sizeof(by));
                goto enough;
            }
            if (M(&P, "^(\\S+) "))
                cap(&P, 1, rdns, sizeof(rdns));
            if (M(&P, " \\((\\S+)\\) "))
                cap(&P, 1, helo, sizeof(helo));
            if (M(&P, " \\[(" IP ")(?:\\.\\d+)?\\] "))
                cap(&P, 1, ip, sizeof(ip));
            if (M(&P, "by (\\S+) ")) {
                cap(&P, 1, by, sizeof(by));
                if (ip[0])
                    goto enough;
            }
        } else if (has(&P, " (Postfix) with")) {
            if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\]\\) by (\\S+) ") ||
                MT(&P, '(', "^(\\S+) \\((\\S+)\\[(" IP ")\\]\\) by (\\S+) ")) {
                looked_up = true;
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, rdns, sizeof(rdns));
                cap(&P, 3, ip, sizeof(ip));
                cap(&P, 4, by, sizeof(by));
                if (strcmp(rdns, "unknown") == 0)
                    rdns[0] = '\0';
                goto enough;
            }
        } else if (has(&P, "(Scalix SMTP Relay")) {
            if (MT(&P, '(', "^(\\S+) \\( ?(" IP ")\\) by (\\S+)")) {
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 3, by, sizeof(by));
                goto enough;
            }
        } else if (has(&P, " (Lotus Domino ")) {
            if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\]\\) by (\\S+) \\(Lotus")) {
                looked_up = false;
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 3, by, sizeof(by));
                goto enough;
            }
        }
        if (has(&P, "with HTTP") && M(&P, "\\bwith HTTP\\b") &&
            M(&P, "^(" IP ") \\(\\[" IP "\\]\\) by (\\S+)")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (!(has(&P, " (qmail-") && M(&P, " by \\S+ \\(qmail-\\S+\\) with "))) {
            if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\].*\\) by (\\S+) \\(")) {
                looked_up = true;
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 2, rdns, sizeof(rdns));
                cap(&P, 3, ip, sizeof(ip));
                cap(&P, 4, by, sizeof(by));
                struct pl Q = { xstrdup(rdns), strlen(rdns), NULL, 0 };
                if (M(&Q, "^IDENT:([^\\@]*)\\@")) {
                    cap(&Q, 1, ident, sizeof(ident));
                    S(&Q, "^IDENT:([^\\@]*)\\@", 0, "");
                }
                if (M(&Q, "^([^\\@]*)\\@")) {
                    cap(&Q, 1, ident, sizeof(ident));
                    S(&Q, "^([^\\@]*)\\@", 0, "");
                }
                str_copy(rdns, Q.s, sizeof(rdns));
                free(Q.s);
                goto enough;
            }
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\]\\) by (\\S+) with \\S+ \\(")) {
            looked_up = true;
            cap(&P, 2, rdns, sizeof(rdns));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\] helo=(\\S+)\\) by (\\S+) with ")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, helo, sizeof(helo));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(<unknown\\S*>\\[(" IP ")\\]\\) by (\\S+) ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S+\\.\\S+)\\[(" IP ")\\]\\) by (\\S+) ")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, rdns, sizeof(rdns));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S*)\\@\\[(" IP ")\\].*\\) by (\\S+) \\(")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            cap(&P, 2, ident, sizeof(ident));
            goto enough;
        }
        if (has(&P, ".hotmail.msn.com ") && M(&P, "by (\\S+\\.hotmail\\.msn\\.com) ")) {
            cap(&P, 1, by, sizeof(by));
            if (M(&P, "^(" IP ") "))
                cap(&P, 1, ip, sizeof(ip));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((?:HELO|EHLO) (\\S*)\\) \\((" IP ")\\) by (\\S+) \\(qpsmtpd\\/\\S+\\) with (?:ESMTP|SMTP)")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(LHLO (\\S*)\\) \\((" IP ")\\) by (\\S+) with LMTP")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((?:HELO|EHLO) (\\S*)\\) \\[(" IP ")\\] by (\\S+) \\([^\\)]+\\) with (?:ESMTP|SMTP)")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\]\\) by (\\S+) via smtpd \\(for \\S+\\) with SMTP\\(")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        /* qmail */
        if (MT(&P, '(', "^\\S+( \\((?:HELO|EHLO) \\S*\\))? \\((\\S+\\@)?\\[?" IP "\\]?\\)( \\(envelope-sender <\\S+>\\))? by \\S+( \\(.+\\))* with (.* )?(SMTP|QMQP)(?! id )")) {
            if (MT(&P, '(', "^(\\S+) \\((?:HELO|EHLO) ([^ \\(\\)]*)\\) \\((\\S*)\\@\\[?(" IP ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                cap(&P, 1, rdns, sizeof(rdns));
                cap(&P, 2, helo, sizeof(helo));
                cap(&P, 3, ident, sizeof(ident));
                cap(&P, 4, ip, sizeof(ip));
                cap(&P, 6, by, sizeof(by));
            } else if (MT(&P, '(', "^(\\S+) \\((?:HELO|EHLO) ([^ \\(\\)]*)\\) \\(\\[?(" IP ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                cap(&P, 1, rdns, sizeof(rdns));
                cap(&P, 2, helo, sizeof(helo));
                cap(&P, 3, ip, sizeof(ip));
                cap(&P, 5, by, sizeof(by));
            } else if (MT(&P, '(', "^(\\S+) \\((\\S*)\\@\\[?(" IP ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 1, rdns, sizeof(rdns));
                cap(&P, 2, ident, sizeof(ident));
                cap(&P, 3, ip, sizeof(ip));
                cap(&P, 5, by, sizeof(by));
            } else if (MT(&P, '(', "^(\\S+) \\(\\[?(" IP ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                cap(&P, 1, helo, sizeof(helo));
                cap(&P, 1, rdns, sizeof(rdns));
                cap(&P, 2, ip, sizeof(ip));
                cap(&P, 4, by, sizeof(by));
            }
            if (strcmp(rdns, "unknown") != 0)
                looked_up = true;
            else
                rdns[0] = '\0';
            goto enough;
        }
        if (M(&P, " via HTTP$") && M(&P, "^\\[(" IP ")\\] by (\\S+) via HTTP$")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\( \\[(" IP ")\\]\\).*? by (\\S+) ")) {
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\((\\S+) \\[(" IP ")\\]\\) by (\\S+) ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\[(" IP ")\\] by (\\S+) ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\(\\[?(" IP ")\\]?\\) by (\\S+) ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '[', "^(\\S+) \\[(" IP ")\\] by (\\S+) \\[" IP "\\] with ")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '[', "^(\\S+) \\[\\((" IP ")\\)\\] by (\\S+) \\(" IP "\\) ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\]\\) by (\\S+) \\(")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\]\\).*? by (\\S+)\\b")) {
            cap(&P, 2, tmp, sizeof(tmp));
            if (strcmp(tmp, "softdnserr") == 0) {
                looked_up = false;
            } else {
                looked_up = true;
                str_copy(rdns, tmp, sizeof(rdns));
            }
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")(?:[.:]\\d+)?\\]\\).*? by (\\S+) ")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\]\\)(?: \\(authenticated bits=\\d+\\))? by (\\S+) \\(")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, rdns, sizeof(rdns));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "with (?:POP3|IMAP)")) {
            *fetcher = true;
            goto skip;
        }
        if (MT(&P, '(', "^(\\S+) \\((?:HELO|EHLO) ([^\\)]*)\\) \\((\\S*@)?\\[?(" IP ")\\]?\\).* by (\\S+) ")) {
            looked_up = true;
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, ident, sizeof(ident));
            cap(&P, 4, ip, sizeof(ip));
            cap(&P, 5, by, sizeof(by));
            size_t il = strlen(ident);
            if (il && ident[il - 1] == '@')
                ident[il - 1] = '\0';
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S*@)?\\[?(" IP ")\\]?\\).* by (\\S+) ")) {
            looked_up = true;
            cap(&P, 1, rdns, sizeof(rdns));
            str_copy(helo, rdns, sizeof(helo));
            cap(&P, 2, ident, sizeof(ident));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            size_t il = strlen(ident);
            if (il && ident[il - 1] == '@')
                ident[il - 1] = '\0';
            goto enough;
        }
        if (M(&P, " with http for ") && M(&P, "^\\[(" IP ")\\] by (\\S+) with http for ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, " via smap ") && M(&P, "^(\\S+)\\((" IP ")\\) by (\\S+) via smap ")) {
            looked_up = true;
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(\\S+)\\((" IP "), (?:HELO|EHLO) (\\S*)\\) by (\\S+) via smap ")) {
            looked_up = true;
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, helo, sizeof(helo));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (M(&P, " \\(Post") && M(&P, "^\\[(" IP ")\\] by (\\S+) \\(Post")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, " \\(ArGoSoft") && M(&P, "^\\[(" IP ")\\] by (\\S+) \\(ArGoSoft")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(" IP ") by (\\S+) \\((?:SMTPL|InterScan)\\b")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, " with BSMTP") && M(&P, "^\\S+ by \\S+ with BSMTP"))
            goto skip;
        if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\]\\) by (\\S+) with ")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, rdns, sizeof(rdns));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((?:HELO|EHLO) (\\S*)\\) \\((?:(\\S+)\\@)?(" IP ").*?\\) by (\\S+) with ")) {
            looked_up = true;
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 4, ip, sizeof(ip));
            cap(&P, 5, by, sizeof(by));
            if (capped(&P, 3))
                cap(&P, 3, ident, sizeof(ident));
            goto enough;
        }
        if (M(&P, "^\\[(" IP ")\\] \\((?:account \\S+ )?(?:HELO|EHLO) (\\S*)\\) by (\\S+) \\(")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, " \\(CommuniGate Pro") && MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\] verified\\) by (\\S+) \\(")) {
            looked_up = true;
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\(\\[(" IP ")\\]\\) by (\\S+) with ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^([^\\d]\\S+) \\((" IP ")\\) by (\\S+) ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\S+ \\(\\S+\\) by \\S+ \\(Content Technologies "))
            goto skip;
        if (MT(&P, '(', "^(\\S+) \\(\\[(" IP ")\\] \\[(\\S+)\\]\\) by (\\S+) with ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(" IP ") by (\\S+) with ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S+)\\[(" IP ")\\]\\) by (\\S+) ")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, rdns, sizeof(rdns));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\[(" IP ")\\]\\S+ \\((?:HELO|EHLO) (\\S*)\\) by (\\S+) ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(" IP ") \\((?:HELO|EHLO) (\\S*)\\) by (\\S+) ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, helo, sizeof(helo));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '[', "^(\\S+) \\[(" IP ")\\] by (\\S+) ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(\\S+)\\((" IP ")\\) by (\\S+) ")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\[(" IP ")\\] by (\\S+) \\(MailGate ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\(unverified \\[(" IP ")\\]\\) by (\\S+) ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(" IP ") \\([A-Za-z][^\\)]+\\) by (\\S+) with ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\[(" IP ")\\] \\(([^\\)]+)\\) by (\\S+) ")) {
            cap(&P, 1, ip, sizeof(ip));
            cap(&P, 2, sub, sizeof(sub));
            cap(&P, 3, by, sizeof(by));
            goto exim_sub;
        }
        if (MT(&P, '(', "^(\\S+) \\((?:\\S+\\@)?(" IP ")\\) by (\\S+) with ")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^(\\S+)\\((" IP ")\\)(?:, claiming to be \"(\\S+)\")? via \\S+ by (\\S+),")) {
            cap(&P, 1, rdns, sizeof(rdns));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, helo, sizeof(helo));
            cap(&P, 4, by, sizeof(by));
            if (strcmp(rdns, "UNKNOWN") != 0)
                looked_up = true;
            goto enough;
        }
        if (MT(&P, '(', "^(\\S+) \\((\\S+)@(" IP ") with login\\) by (\\S+\\.yahoo\\.com) with SMTP")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^X-Originating-IP: (" IP ")$")) {
            cap(&P, 1, ip, sizeof(ip));
            by[0] = '\0';
            goto enough;
        }
        /* handovers to ignore */
        if (M(&P, "^\\S+ \\([^\\s\\@]+\\@" LH "\\) by \\S+ \\(") ||
            M(&P, "^\\S+ \\S+ by \\S+ with local-e?smtp ") ||
            M(&P, "^127\\.0\\.0\\.1 \\(AVG SMTP \\S+ \\[\\S+\\]\\)") ||
            M(&P, "^\\S+\\@\\S+ by \\S+ by uid \\S+ ") ||
            M(&P, "^\\S+\\@\\S+ by \\S+ ") ||
            M(&P, "^Unknown\\/Local \\(") ||
            M(&P, "^" LH " \\((?:\\S+\\@)?" LH "[\\)\\[]") ||
            M(&P, "^\\S+ \\((?:\\S+\\@)?" LH "\\) ") ||
            M(&P, "^\\S+ \\(\\S+\\@\\S+ \\[" LH "\\]\\) ") ||
            M(&P, "^\\(AUTH: \\S+\\) by \\S+ with ") ||
            M(&P, "^localhost \\(localhost \\[\\[UNIX: localhost\\]\\]\\) by ") ||
            M(&P, "^\\S+\\.amazon\\.com by \\S+\\.amazon\\.com with ESMTP \\(peer crosscheck: ") ||
            M(&P, "^[^\\.]+ by \\S+ with Novell_GroupWise") ||
            M(&P, "^no\\.name\\.available by \\S+ via smtpd \\(for "))
            goto skip;
        if (M(&P, "^\\S+ by \\S+ \\(.{0,100}\\) with qmail-scanner"))
            goto skip;              /* (its envelope sender for the next relay is not kept) */
        if (M(&P, "^\\S+ by \\S+ with local") ||
            M(&P, "^\\S+ \\(\\[unix socket\\]\\) by \\S+ \\(Cyrus v[0-9]*?\\.[0-9]*?\\.[0-9]*?\\) with LMTPA") ||
            M(&P, "^\\S+ by \\S+ (?:with|via|for|\\()") ||
            M(&P, "^\\S+ (?:(?:with|via|for) \\S+|\\(unverified\\)) by\\b") ||
            M(&P, "^\\S+ \\(unknown\\) by \\S+ \\(SG\\) with \\b") ||
            M(&P, "^\\S+ \\(\\S+ \\[local\\]\\) by \\S+ \\(OpenSMTPD\\) with \\b") ||
            M(&P, "\\(LSMTP for") ||
            M(&P, "^\\(\\[" LH "\\]\\) with MailEnable ") ||
            M(&P, "^facebook\\.com \\([^\\)]+\\) by facebook\\.com with Thrift id \\S+$") ||
            M(&P, "^\\S+ named \\S+ by gmailapi\\.google\\.com with HTTPREST$") ||
            M(&P, "^\\S+ id \\S+$") ||
            M(&P, "^\\[<.*? \\(Jetsend"))
            goto skip;
        if (!helo[0] && M(&P, "^(\\S+)[^-A-Za-z0-9\\.]"))
            cap(&P, 1, helo, sizeof(helo));
    } else if (S(&P, "^FROM ", 0, "")) {
        if (MT(&P, '(', "^(\\S+) \\((\\S+) \\[(" IP ")\\]\\) BY (\\S+) (?:\\([^\\)]+\\) WITH SMTP )?ID <?(\\S+?)>?(?: FOR <[^>]+>)?$")) {
            looked_up = true;
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, rdns, sizeof(rdns));
            cap(&P, 3, ip, sizeof(ip));
            cap(&P, 4, by, sizeof(by));
            cap(&P, 5, id, sizeof(id));
            if (strcmp(rdns, "unverified") == 0)
                rdns[0] = '\0';
            goto enough;
        }
    } else if (S(&P, "^\\(from ", 0, "")) {
        if (M(&P, "^(\\S*) \\[(" IP ")\\]\\) by (\\S+) \\(NAVGW .*?\\) with ")) {
            cap(&P, 1, helo, sizeof(helo));
            cap(&P, 2, ip, sizeof(ip));
            cap(&P, 3, by, sizeof(by));
            goto enough;
        }
        if (M(&P, "^\\S+\\@localhost\\) by \\S+ ") ||
            M(&P, "^[^\\s\\@]+\\@[^)]+\\) by \\S+\\(jqueuemail\\) id [^\\s;]+"))
            goto skip;
    }
    if (!ip[0] && M(&P, "\\[(" IP ")\\]"))
        cap(&P, 1, ip, sizeof(ip));
    if (ip[0] && by[0])
        goto enough;
    free(P.s);
    return UNPARSEABLE;

exim_sub: {
        /* $sub =~ s/helo=(\S+)// and $helo = $1; s/ident=(\S*)// and $ident = $1 */
        struct pl Q = { xstrdup(sub), strlen(sub), NULL, 0 };
        if (M(&Q, "helo=(\\S+)")) {
            cap(&Q, 1, helo, sizeof(helo));
            S(&Q, "helo=(\\S+)", 0, "");
        }
        if (M(&Q, "ident=(\\S*)"))
            cap(&Q, 1, ident, sizeof(ident));
        free(Q.s);
    }

enough:
    free(P.s);
    {
        size_t l = strlen(rdns);
        while (l && rdns[l - 1] == '.')
            rdns[--l] = '\0';
        if (strcasecmp(rdns, "unknown") == 0 || rdns[0] == '[')
            rdns[0] = '\0';
        if (strncasecmp(ip, "ipv6:", 5) == 0)
            memmove(ip, ip + 5, strlen(ip + 5) + 1);
        if (ip[0] == '[')
            memmove(ip, ip + 1, strlen(ip));
        l = strlen(ip);
        if (l && ip[l - 1] == ']')
            ip[--l] = '\0';
        char *pct = strchr(ip, '%');
        if (pct)
            *pct = '\0';
        struct pl Q = { xstrdup(ip), strlen(ip), NULL, 0 };
        if ((ip[0] == '0' || ip[0] == ':') &&
            Mi(&Q, "^0*:0*:(?:0*:)*ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$"))
            cap(&Q, 1, ip, sizeof(ip));
        free(Q.s);
        l = strlen(by);
        if (l && by[l - 1] == ';')
            by[--l] = '\0';
        strip_bad(ip);
        strip_bad(rdns);
        strip_bad(helo);
        strip_bad(by);
        strip_bad(ident);
        if (have_envfrom) {
            Sg(envfrom, sizeof(envfrom), "^\\s*<*", 0);
            Sg(envfrom, sizeof(envfrom), ">*\\s*$", 0);
            strip_bad(envfrom);
        }
        memset(r, 0, sizeof(*r));
        str_copy(r->ip, ip, sizeof(r->ip));
        str_copy(r->by, by, sizeof(r->by));
        str_copy(r->helo, helo, sizeof(r->helo));
        str_copy(r->id, id, sizeof(r->id));
        str_copy(r->ident, ident, sizeof(r->ident));
        str_copy(r->envfrom, envfrom, sizeof(r->envfrom));
        r->have_envfrom = have_envfrom;
        str_copy(r->auth, auth, sizeof(r->auth));
        if (rdns[0] == '\0') {
            if (looked_up)
                r->no_reverse_dns = true;
            else
                r->rdns_not_in_headers = true;
        }
        str_copy(r->rdns, rdns, sizeof(r->rdns));
        const size_t *ov;
        r->ip_private = rules_re_exec(rules_re(PRIVATE, 0), r->ip, strlen(r->ip), 0, &ov) > 0;
    }
    return PARSED;

skip:
    free(P.s);
    return SKIPPED;
}

static char *
as_string(const struct relay *r)
{
    size_t l = strlen(r->ip) + strlen(r->rdns) + strlen(r->helo) + strlen(r->by) +
               strlen(r->ident) + strlen(r->envfrom) + strlen(r->id) + strlen(r->auth) + 100;
    char *s = xmalloc(l);
    str_fmt(s, l, "[ ip=%s rdns=%s helo=%s by=%s ident=%s envfrom=%s intl=%d id=%s auth=%s msa=%d ]",
            r->ip, r->rdns, r->helo, r->by, r->ident, r->envfrom, r->internal ? 1 : 0, r->id,
            r->auth, r->msa ? 1 : 0);
    return s;
}

void
rmsg_relays(struct rmsg *c)
{
    if (c->relays_done)
        return;
    c->relays_done = true;
    c->last_trusted_index = c->last_internal_index = -1;
    bool in_trusted = true, allow_fetch_markers = true;
    struct relay *rel = xcalloc(RMSG_MAX_RELAYS, sizeof(*rel));
    bool *trusted = xcalloc(RMSG_MAX_RELAYS, sizeof(bool));
    size_t n = 0;
    /* the decoded Received values (Received is never RFC 2047 decoded),
     * then one "from X-Originating-IP: IP" for each of the fields that
     * 10_default_prefs.cf names as originating_ip_headers (the last of
     * each, when it has an address) */
    static const char *const orig[] = { "X-Yahoo-Post-IP", "X-Originating-IP",
                                        "X-Apparently-From", "X-SenderIP", "X-AOL-IP",
                                        "X-MS-Exchange-CrossTenant-OriginalAttributedTenantConnectingIp" };
    struct rvals lines = { 0 };
    unsigned rh = rmsg_name_hash("Received", 8);
    for (size_t i = 0; i < c->nf; i++)
        if (rmsg_field_is(c, i, "Received", rh)) {
            if (lines.n % 16 == 0)
                lines.v = xrealloc(lines.v, (lines.n + 16) * sizeof(char *));
            lines.v[lines.n++] = xstrdup(rmsg_decoded(c, i));
        }
    for (size_t k = 0; k < sizeof(orig) / sizeof(orig[0]); k++) {
        const char *v = NULL;
        unsigned oh = rmsg_name_hash(orig[k], strlen(orig[k]));
        for (size_t i = 0; i < c->nf; i++)
            if (rmsg_field_is(c, i, orig[k], oh))
                v = rmsg_decoded(c, i);
        const size_t *ov;
        if (v == NULL || rules_re_exec(rules_re("(" IP ")", 0), v, strlen(v), 0, &ov) <= 0)
            continue;
        char syn[128];
        snprintf(syn, sizeof(syn), "from X-Originating-IP: %.*s", (int)(ov[3] - ov[2]), v + ov[2]);
        if (lines.n % 16 == 0)
            lines.v = xrealloc(lines.v, (lines.n + 16) * sizeof(char *));
        lines.v[lines.n++] = xstrdup(syn);
    }
    for (size_t i = 0; i < lines.n; i++) {
        const char *line = lines.v[i];
        struct relay r;
        bool fetcher = false;
        int rc = parse_line(line, &r, &fetcher);
        if (fetcher && allow_fetch_markers) {
            /* a mail fetcher's handover: start again from here */
            for (size_t k = 0; k < n; k++)
                free(rel[k].as_string);
            n = 0;
        }
        if (rc == UNPARSEABLE)
            c->nunparseable++;
        if (rc != PARSED) {
            if (in_trusted) {
                c->last_trusted_index++;
                c->last_internal_index++;
            }
            continue;
        }
        if (in_trusted && !r.ip_private && !r.auth[0])
            in_trusted = false;         /* the trust boundary SpamAssassin infers */
        r.internal = in_trusted;
        r.msa = false;
        if (n == RMSG_MAX_RELAYS)
            continue;
        r.as_string = as_string(&r);
        trusted[n] = in_trusted;
        rel[n++] = r;
        if (in_trusted) {
            allow_fetch_markers = true;
            c->last_trusted_index++;
            c->last_internal_index++;
        } else {
            allow_fetch_markers = false;
        }
    }
    rvals_free(&lines);
    c->relays = rel;
    c->nrelays = n;
    c->ntrusted = 0;
    while (c->ntrusted < n && trusted[c->ntrusted])
        c->ntrusted++;
    c->ninternal = c->ntrusted;
    free(trusted);
    struct { size_t from, to; } ranges[4] = { { 0, c->ntrusted }, { c->ntrusted, n },
                                              { 0, c->ntrusted }, { c->ntrusted, n } };
    for (int w = 0; w < 4; w++) {
        size_t len = 1;
        for (size_t k = ranges[w].from; k < ranges[w].to; k++)
            len += strlen(rel[k].as_string) + 1;
        char *s = xmalloc(len);
        s[0] = '\0';
        size_t o = 0;
        for (size_t k = ranges[w].from; k < ranges[w].to; k++) {
            size_t l = strlen(rel[k].as_string);
            if (o)
                s[o++] = ' ';
            memcpy(s + o, rel[k].as_string, l);
            o += l;
            s[o] = '\0';
        }
        c->relays_str[w] = s;
    }
}
