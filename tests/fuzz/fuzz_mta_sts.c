/* Fuzz target: the MTA-STS policy parser and the MX pattern match
 * (delivery/mta_sts.c), the policy being what an HTTPS server of the
 * recipient's domain sends (RFC 8461 3.2). The first line of the input is
 * an MX host name, the rest the policy text. Whatever the bytes: no crash,
 * a parsed policy has a known mode, at most STS_MAX_MX bounded patterns
 * and a max_age of at most a year, and matching any host stays in bounds. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include "../../common/mail.h"
#include "../../delivery/delivery_private.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 70000)
        return 0;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hlen = nl ? (size_t)(nl - data) : size;
    char host[300];
    if (hlen >= sizeof(host))
        hlen = sizeof(host) - 1;
    memcpy(host, data, hlen);
    host[hlen] = '\0';
    size_t blen = nl ? size - (size_t)(nl - data) - 1 : 0;
    char *body = malloc(blen + 1);
    if (body == NULL)
        return 0;
    if (blen)
        memcpy(body, nl + 1, blen);
    body[blen] = '\0';
    struct sts_policy pol;
    memset(&pol, 0, sizeof(pol));
    char why[300];
    if (mta_sts_parse(body, &pol, why, sizeof(why)) == 0) {
        assert(pol.mode == STS_NONE || pol.mode == STS_TESTING || pol.mode == STS_ENFORCE);
        assert(pol.nmx <= STS_MAX_MX);
        assert(pol.max_age >= 0 && pol.max_age <= 86400.0 * 365);
        for (size_t i = 0; i < pol.nmx; i++) {
            assert(memchr(pol.mx[i], '\0', sizeof(pol.mx[i])) != NULL);
            /* a pattern matches the host it names (wildcards aside) */
            if (pol.mx[i][0] != '*' && pol.mx[i][0] != '\0' && !strchr(pol.mx[i], ' '))
                (void)mta_sts_mx_match(&pol, pol.mx[i]);
        }
    }
    (void)mta_sts_mx_match(&pol, host);
    free(body);
    return 0;
}
