/* Fuzz target: ARC's parsers and chain (filters/arc_set.c, arc_canon.c,
 * arc_chain.c). The bytes are a message: its ARC sets are read and the
 * chain checked with a fixed key for every selector (Ed25519, this file's
 * own); each value is also parsed as a tag-list and stripped of b=. Then
 * the round trip: where the chain is none or passed and the message can
 * be sealed, the sealed message (our three fields on top) must verify as
 * a pass with us as the sealer. Whatever the bytes: no crash, no read
 * outside them, bounded work. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../filters/arc.h"

static const char pem[] = "-----BEGIN PRIVATE KEY-----\n"
                          "MC4CAQAwBQYDK2VwBCIEIBKHq82MpapoMuz7SpwAe8uCLo6TSt76hY/UOQH0QTM9\n"
                          "-----END PRIVATE KEY-----\n";

static int
key(void *arg, const char *selector, const char *domain, char *rec, size_t recsize)
{
    (void)arg;
    (void)domain;
    if (selector[0] == 'x')
        return selector[1] == 't' ? -1 : 1;     /* none, or a DNS failure */
    snprintf(rec, recsize, "v=DKIM1; k=ed25519; p=dxtgvcVPbfPvAqo/LvnprIPRiBAyj+jnq4CU4QHtAf8=");
    return 0;
}

static void
emit(void *arg, const void *p, size_t n)
{
    (void)p;
    *(size_t *)arg += n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct arc_msg m, m2;
    static struct arc_seal_out out;
    static char strip[ARC_MAX_FIELD], canon[ARC_MAX_FIELD];
    const char *msg = (const char *)data;
    if (arc_msg_parse(msg, size, &m) < 0)
        return 0;
    if (m.n > ARC_MAX_I)
        abort();
    for (unsigned i = 1; m.bad == NULL && i <= m.n; i++)
        for (int k = 0; k < 3; k++)
            if (m.set[i].f[k].name == NULL)
                abort();
    for (size_t i = 0; i < m.nfield && i < 64; i++) {
        const struct arc_field *f = &m.field[i];
        struct arc_tags t;
        if (arc_tags_parse(f->val, f->vlen, &t) == 0 && t.n > ARC_MAX_TAGS)
            abort();
        size_t n = arc_strip_b(f->val, f->vlen, strip, sizeof(strip));
        if (n >= sizeof(strip) || (n && strip[n] != '\0'))
            abort();
        for (int c = 0; c < 2; c++) {
            n = arc_canon_header((enum arc_canon)c, f->name, f->nlen, f->val, f->vlen, c, canon,
                                 sizeof(canon));
            if (n >= sizeof(canon))
                abort();
        }
    }
    size_t blen = 0;
    arc_canon_body(ARC_CANON_RELAXED, m.body, m.body_len, emit, &blen);
    struct arc_result r;
    arc_chain_verify(&m, key, NULL, &r);
    if (r.cv == ARC_PASS && (r.n == 0 || r.sealer[0] == '\0'))
        abort();
    /* the round trip, for a message whose first line starts a field */
    char why[200];
    if (size == 0 || msg[0] == ' ' || msg[0] == '\t' ||
        arc_chain_seal(&m, &r, "fuzz.example", "s1", pem, sizeof(pem) - 1,
                       "mx.fuzz.example; arc=none", 1700000000, &out, why, sizeof(why)) < 0)
        return 0;
    size_t l1 = strlen(out.as), l2 = strlen(out.ams), l3 = strlen(out.aar);
    size_t total = l1 + l2 + l3 + 6 + size;
    char *sealed = malloc(total);
    size_t o = 0;
    memcpy(sealed + o, out.as, l1), o += l1, memcpy(sealed + o, "\r\n", 2), o += 2;
    memcpy(sealed + o, out.ams, l2), o += l2, memcpy(sealed + o, "\r\n", 2), o += 2;
    memcpy(sealed + o, out.aar, l3), o += l3, memcpy(sealed + o, "\r\n", 2), o += 2;
    memcpy(sealed + o, msg, size);
    if (arc_msg_parse(sealed, total, &m2) == 0) {
        struct arc_result r2;
        arc_chain_verify(&m2, key, NULL, &r2);
        if (r2.cv != ARC_PASS || r2.n != r.n + 1 || strcmp(r2.sealer, "fuzz.example") != 0) {
            fprintf(stderr, "sealed i=%u does not verify: cv %d: %s\n", r.n + 1, r2.cv, r2.why);
            abort();
        }
    }
    free(sealed);
    return 0;
}
