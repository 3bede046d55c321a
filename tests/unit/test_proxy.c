/* Unit tests: the PROXY protocol v1/v2 parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>
#include "../../gateway/gateway.h"
#include "../../common/util.h"

static const char *
src_ip(struct proxy_result *r, char *buf, size_t size)
{
    uint16_t port;
    sockaddr_str((struct sockaddr *)&r->src, buf, size, &port);
    return buf;
}

static void
test_v1(void **state)
{
    (void)state;
    struct proxy_result r;
    char ip[64];
    const char *h = "PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO x\r\n";
    int n = proxy_parse((const unsigned char *)h, strlen(h), &r);
    assert_int_equal(n, (int)(strchr(h, '\n') - h + 1));
    assert_false(r.local);
    assert_string_equal(src_ip(&r, ip, sizeof(ip)), "203.0.113.7");
    h = "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
    assert_int_equal(proxy_parse((const unsigned char *)h, strlen(h), &r), (int)strlen(h));
    assert_string_equal(src_ip(&r, ip, sizeof(ip)), "2001:db8::1");
    h = "PROXY UNKNOWN\r\n";
    assert_int_equal(proxy_parse((const unsigned char *)h, strlen(h), &r), (int)strlen(h));
    assert_true(r.local);
    /* partial input: need more */
    h = "PROXY TCP4 203.0.113.7";
    assert_int_equal(proxy_parse((const unsigned char *)h, strlen(h), &r), 0);
    assert_int_equal(proxy_parse((const unsigned char *)"PRO", 3, &r), 0);
    /* refused */
    static const char *bad[] = {
        "PROXY TCP4 1.2.3 192.0.2.1 1 2\r\n", "PROXY TCP4 1.2.3.4 192.0.2.1 1 65536\r\n",
        "PROXY TCP4 1.2.3.4 192.0.2.1 01 2\r\n", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
        "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "EHLO x\r\n", "PROXY\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(proxy_parse((const unsigned char *)bad[i], strlen(bad[i]), &r), -1);
    /* no CRLF within 107 bytes */
    char longline[200];
    memset(longline, 'x', sizeof(longline));
    memcpy(longline, "PROXY ", 6);
    assert_int_equal(proxy_parse((const unsigned char *)longline, sizeof(longline), &r), -1);
}

static void
test_v2(void **state)
{
    (void)state;
    unsigned char b[64] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
                            0x21, 0x11, 0x00, 0x0C, 198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x41, 0, 25 };
    struct proxy_result r;
    char ip[64];
    assert_int_equal(proxy_parse(b, 28, &r), 28);
    assert_string_equal(src_ip(&r, ip, sizeof(ip)), "198.51.100.9");
    for (size_t n = 0; n < 28; n++)             /* every prefix wants more */
        assert_int_equal(proxy_parse(b, n, &r), 0);
    b[12] = 0x20;                               /* LOCAL */
    assert_int_equal(proxy_parse(b, 28, &r), 28);
    assert_true(r.local);
    b[12] = 0x31;                               /* version 3 */
    assert_int_equal(proxy_parse(b, 28, &r), -1);
    b[12] = 0x21;
    b[15] = 4;                                  /* too short for TCP4 */
    assert_int_equal(proxy_parse(b, 20, &r), -1);
    b[14] = 0xFF;                               /* over the length bound */
    assert_int_equal(proxy_parse(b, 28, &r), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v2),
    };
    return cmocka_run_group_tests_name("proxy", tests, NULL, NULL);
}
