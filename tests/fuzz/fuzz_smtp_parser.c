/* libFuzzer target: the SMTP command parser, one command line per input line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../gateway/gateway.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *save = NULL;
    for (char *line = strtok_r(buf, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        const char *args, *why;
        enum smtp_verb v = smtp_parser_verb(line, &args);
        struct smtp_mail_args m;
        struct smtp_rcpt_args r;
        char domain[256];
        uint64_t n;
        bool last;
        switch (v) {
        case SMTP_MAIL:
            if (smtp_parser_mail(args, &m, &why) == 0 && strlen(m.addr) > SMTP_ADDR_MAX)
                abort();
            break;
        case SMTP_RCPT:
            if (smtp_parser_rcpt(args, &r, &why) == 0) {
                if (strlen(r.addr) > SMTP_ADDR_MAX)
                    abort();
                (void)smtp_parser_domain(r.addr);
            }
            break;
        case SMTP_HELO:
        case SMTP_EHLO:
            if (smtp_parser_helo(args, domain, sizeof(domain), &why) == 0 && strpbrk(domain, "\r\n "))
                abort();
            break;
        case SMTP_BDAT:
            (void)smtp_parser_bdat(args, &n, &last, &why);
            break;
        default:
            break;
        }
    }
    free(buf);
    return 0;
}
