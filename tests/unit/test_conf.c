/* Unit tests: the UCL-syntax parser and the schema checker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "../../common/mail.h"

static struct conf_node *
parse(const char *text, char *err)
{
    return conf_parse(text, strlen(text), err, 256);
}

static const struct conf_node *
child(const struct conf_node *n, const char *key)
{
    for (const struct conf_node *c = n->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

static void
test_syntax_forms(void **state)
{
    (void)state;
    char err[256];
    struct conf_node *root = parse("# comment\na = 1;\nb: \"two\", c three\n// x\n"
                                   "sect { inner = [ x, \"y\", { k = v } ] /* c */ }\n"
                                   "\"quoted key\" = 'single'\nnext { } after { }\n", err);
    assert_non_null(root);
    assert_string_equal(child(root, "a")->value, "1");
    assert_int_equal(child(root, "a")->line, 2);
    assert_string_equal(child(root, "b")->value, "two");
    assert_true(child(root, "b")->quoted);
    assert_string_equal(child(root, "c")->value, "three");
    const struct conf_node *inner = child(child(root, "sect"), "inner");
    assert_int_equal(inner->type, CONF_ARRAY);
    assert_int_equal(inner->line, 5);
    assert_string_equal(inner->child->next->value, "y");
    assert_int_equal(inner->child->next->next->type, CONF_OBJECT);
    assert_string_equal(child(root, "quoted key")->value, "single");
    assert_non_null(child(root, "after"));
    conf_node_free(&root);
    assert_null(root);
    root = parse("{ \"json\": { \"n\": 5, \"l\": [1, 2] } }", err);
    assert_non_null(root);
    assert_string_equal(child(child(root, "json"), "n")->value, "5");
    conf_node_free(&root);
}

static void
test_syntax_errors(void **state)
{
    (void)state;
    static const struct { const char *text; const char *err; } cases[] = {
        { "a = 1;\nb = {\n", "line 3: missing '}'" },
        { "a = \"open\n", "line 1: newline in quoted string" },
        { "a = 1 2;\n", "line 1: expected ';', ',' or a new line after a value" },
        { "a = 1;\na = 2;\n", "line 2: a: duplicate key (first at line 1)" },
        { "a = [1, 2\n", "line 2: missing ']'" },
        { "}\n", "line 1: unexpected '}'" },
        { "/* never closed\n", "line 1: unterminated comment" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256];
        assert_null(parse(cases[i].text, err));
        assert_string_equal(err, cases[i].err);
    }
    /* nesting is bounded */
    char deep[200] = "a = ";
    for (int i = 0; i < 40; i++)
        strncat(deep, "[", sizeof(deep) - strlen(deep) - 1);
    char err[256];
    assert_null(parse(deep, err));
    assert_non_null(strstr(err, "nested too deeply"));
}

static void
collect(const char *msg, void *ctx)
{
    char *buf = ctx;
    strncat(buf, msg, 4000 - strlen(buf));
    strncat(buf, "\n", 4000 - strlen(buf));
}

static void
test_schema(void **state)
{
    (void)state;
    char path[] = "/tmp/moat-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "hostname = mx.example.com\nstate_dir = /var/lib/moat\n"
                       "listen { smtp = [ \"127.0.0.1:25\", { address = \"[::1]:25\"; proxy_protocol = yes; } ] }\n"
                       "limits { message_size = 10mb; recipients = 7; command_timeout = 5min }\n"
                       "smtp { greet_pause = 1500ms }\n"
                       "domains { Example.COM { delivery = relay; relay_to = \"[10.0.0.1]:2525\" } }\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(conf_load(path, &cfg, collect, msgs), 0);
    assert_string_equal(msgs, "");
    assert_int_equal(cfg.limits.message_size, 10 * 1024 * 1024);
    assert_int_equal(cfg.limits.recipients, 7);
    assert_int_equal(cfg.limits.command_timeout, 300);
    assert_int_equal(cfg.smtp.greet_pause_ms, 1500);
    assert_int_equal(cfg.listen.smtp.n, 2);
    assert_true(cfg.listen.smtp.v[1].proxy_protocol);
    assert_non_null(conf_domain(&cfg, "example.com"));
    assert_string_equal(conf_domain(&cfg, "EXAMPLE.com")->relay_to, "[10.0.0.1]:2525");
    assert_null(conf_domain(&cfg, "other.com"));
    assert_int_equal(cfg.queue.max_lifetime, 5 * 86400);     /* default */
    assert_string_equal(cfg.pid_file, "/var/lib/moat/moatd.pid");
    conf_free(&cfg);
    unlink(path);
}

static int
load_text(const char *text, struct moat_config *cfg, char *msgs)
{
    char path[] = "/tmp/moat-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = conf_load(path, cfg, collect, msgs);
    unlink(path);
    return rc;
}

/* conf_route: a domain's relay_to first, then the transport named by the
 * domain, the longest ".parent", "*"; queue.tls the default policy. */
static void
test_routes(void **state)
{
    (void)state;
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(load_text("hostname = mx.example.com\nstate_dir = /var/lib/moat\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "queue { tls = encrypt }\n"
                               "domains { own.example { delivery = relay; relay_to = \"10.0.0.1:25\"; tls = none } }\n"
                               "transports {\n"
                               "  \"*\" { relay_to = \"smart.example:587\"; tls = verify;\n"
                               "        auth_user = gw; auth_password = pw }\n"
                               "  \".corp.example\" { relay_to = \"10.0.0.2:25\" }\n"
                               "  \".b.corp.example\" { relay_to = \"10.0.0.3:25\"; tls = may }\n"
                               "  \"Partner.example\" { tls = verify }\n"
                               "}\n", &cfg, msgs), 0);
    assert_string_equal(msgs, "");
    static const struct {
        const char *domain, *relay_to;
        enum tls_policy tls;
        const char *user;
    } cases[] = {
        { "own.example", "10.0.0.1:25", TLS_NONE, "" },           /* relay_to first */
        { "OWN.example", "10.0.0.1:25", TLS_NONE, "" },
        { "partner.example", "", TLS_VERIFY, "" },                /* exact; by MX */
        { "x.partner.example", "smart.example:587", TLS_VERIFY, "gw" },
        { "a.corp.example", "10.0.0.2:25", TLS_ENCRYPT, "" },     /* .parent; queue.tls */
        { "x.b.corp.example", "10.0.0.3:25", TLS_MAY, "" },       /* the longest */
        { "b.corp.example", "10.0.0.2:25", TLS_ENCRYPT, "" },     /* not its own .b */
        { "corp.example", "smart.example:587", TLS_VERIFY, "gw" },/* .corp is subdomains only */
        { "xcorp.example", "smart.example:587", TLS_VERIFY, "gw" },
        { "anything.test", "smart.example:587", TLS_VERIFY, "gw" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct conf_route r;
        conf_route(&cfg, cases[i].domain, &r);
        assert_string_equal(r.relay_to, cases[i].relay_to);
        assert_int_equal(r.tls, cases[i].tls);
        assert_string_equal(r.auth_user, cases[i].user);
    }
    conf_free(&cfg);
    /* no transports: MX and the global default */
    assert_int_equal(load_text("hostname = mx.example.com\nstate_dir = /var/lib/moat\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\nqueue { tls = true }\n",
                               &cfg, msgs), 0);
    struct conf_route r;
    conf_route(&cfg, "example.org", &r);
    assert_string_equal(r.relay_to, "");
    assert_int_equal(r.tls, TLS_MAY);
    conf_free(&cfg);
}

static bool
peer_ok(const struct listen_addr *la, const char *ip)
{
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(sockaddr_parse(ip, 25, &ss, &len), 0);
    return conf_net_match(la->proxy_from, la->nproxy_from, (struct sockaddr *)&ss);
}

/* proxy_from on a PROXY listener (loopback by default), sender_login. */
static void
test_proxy_from_and_sender_login(void **state)
{
    (void)state;
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ { address = \"127.0.0.1:25\"; proxy_protocol = true; },\n"
                               "  { address = \"127.0.0.1:26\"; proxy_protocol = true;\n"
                               "    proxy_from = [ \"10.1.0.0/16\", \"192.0.2.7 2001:db8::/32\" ]; } ] }\n"
                               "smtp { sender_login = domain }\n"
                               "domains { b.example { delivery = relay; sender_login = any } }\n",
                               &cfg, msgs), 0);
    assert_string_equal(msgs, "");
    const struct listen_addr *dflt = &cfg.listen.smtp.v[0], *set = &cfg.listen.smtp.v[1];
    assert_true(peer_ok(dflt, "127.0.0.1") && peer_ok(dflt, "127.9.8.7") && peer_ok(dflt, "::1"));
    assert_false(peer_ok(dflt, "192.0.2.7") || peer_ok(dflt, "::2"));
    assert_true(peer_ok(set, "10.1.255.3") && peer_ok(set, "192.0.2.7") &&
                peer_ok(set, "2001:db8:ffff::1") && peer_ok(set, "::ffff:10.1.0.1"));
    assert_false(peer_ok(set, "10.2.0.1") || peer_ok(set, "192.0.2.8") ||
                 peer_ok(set, "127.0.0.1") || peer_ok(set, "2001:db9::1"));
    assert_int_equal(cfg.smtp.sender_login, SENDER_LOGIN_DOMAIN);
    assert_int_equal(conf_sender_login(&cfg, "B.example"), SENDER_LOGIN_ANY);
    assert_int_equal(conf_sender_login(&cfg, "other.example"), SENDER_LOGIN_DOMAIN);
    conf_free(&cfg);

    msgs[0] = '\0';
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ { address = \"127.0.0.1:25\"; proxy_from = \"10.0.0.1\"; },\n"
                               "  { address = \"127.0.0.1:26\"; proxy_protocol = true; proxy_from = \"10.0.0.0/33 x\"; } ]\n"
                               "  imap = [ { address = \"127.0.0.1:143\"; proxy_protocol = true; } ] }\n"
                               "smtp { sender_login = loose }\n"
                               "domains { b.example { delivery = relay; sender_login = all } }\n",
                               &cfg, msgs), -1);
    const char *want[] = {
        ":2: listen.smtp.proxy_from: needs proxy_protocol = true\n",
        ":3: listen.smtp.proxy_from: '10.0.0.0/33' is not an IP address or network",
        ":3: listen.smtp.proxy_from: 'x' is not an IP address or network",
        ":4: listen.imap.proxy_protocol: not supported on imap listeners (only smtp, submission, smtps)\n",
        ":5: smtp.sender_login: 'loose' is not one of: strict domain any\n",
        ":6: domains.b.example.sender_login: 'all' is not one of: strict domain any\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(msgs, want[i]) == NULL)
            fail_msg("missing [%s] in:\n%s", want[i], msgs);
    conf_free(&cfg);
}

/* mynetworks (global, a listener's own), verify, the outbound group. */
static void
test_mynetworks_verify_outbound(void **state)
{
    (void)state;
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\", { address = \"127.0.0.1:26\"; mynetworks = []; } ] }\n"
                               "smtp { mynetworks = \"10.0.0.0/8 2001:db8::/32\" }\n"
                               "filters = [ spf ]\n"
                               "outbound { spf { fail = continue } }\n"
                               "domains { c.example { delivery = relay; relay_to = \"10.0.0.2:25\";\n"
                               "  verify = static; verify_addresses = [ \"Bob@C.example\", \"al@c.example\" ] } }\n",
                               &cfg, msgs), 0);
    assert_string_equal(msgs, "");
    const struct conf_nets *g = conf_mynetworks(&cfg, &cfg.listen.smtp.v[0]);
    const struct conf_nets *none = conf_mynetworks(&cfg, &cfg.listen.smtp.v[1]);
    assert_int_equal(g->n, 2);
    assert_int_equal(none->n, 0);
    const struct domain_conf *d = conf_domain(&cfg, "c.example");
    assert_int_equal(d->verify, VERIFY_STATIC);
    assert_true(conf_verify_known(d, "bob@c.example") && conf_verify_known(d, "AL@c.EXAMPLE"));
    assert_false(conf_verify_known(d, "carol@c.example") || conf_verify_known(d, "bob@c.example2"));
    assert_string_equal(conf_outbound_group(&cfg), CONF_OUTBOUND_GROUP);
    assert_int_equal(cfg.noutbound_sections, 1);
    conf_free(&cfg);

    msgs[0] = '\0';
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "smtp { mynetworks = [ \"10.0.0.0/40\" ] }\n"
                               "domains { a.example { delivery = local; verify = static; }\n"
                               "  b.example { delivery = relay; verify = sometimes }\n"
                               "  c.example { delivery = relay; verify = static; verify_addresses = [ \"x@d.example\" ] } }\n",
                               &cfg, msgs), -1);
    const char *want[] = {
        ":2: smtp.mynetworks: '10.0.0.0/40' is not an IP address or network",
        ":3: domains.a.example.verify: a local domain knows its users",
        ":4: domains.b.example.verify: 'sometimes' is not one of: none static callout",
        ":5: domains.c.example.verify_addresses: 'x@d.example' is not an address of c.example",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(msgs, want[i]) == NULL)
            fail_msg("missing [%s] in:\n%s", want[i], msgs);
    conf_free(&cfg);
}

/* redis { }: sentinels with a master, AUTH; bad values named with their line. */
static void
test_redis_sentinels(void **state)
{
    (void)state;
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "redis { sentinels = [ \"127.0.0.1:26379\", \"[::1]:26380\" ];\n"
                               "  master = \"mymaster\"; username = moat; password = \"s3cret\"; }\n",
                               &cfg, msgs), 0);
    assert_string_equal(msgs, "");
    assert_int_equal(cfg.redis.nsentinels, 2);
    assert_string_equal(cfg.redis.sentinels[1], "[::1]:26380");
    assert_string_equal(cfg.redis.address, "sentinel:mymaster");
    assert_string_equal(cfg.redis.username, "moat");
    assert_string_equal(cfg.redis.password, "s3cret");
    conf_free(&cfg);

    msgs[0] = '\0';
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "redis {\n"
                               "  address = \"127.0.0.1:6379\";\n"
                               "  sentinels = [ \"127.0.0.1:26379\", \"nohost\" ];\n"
                               "}\n",
                               &cfg, msgs), -1);
    const char *want[] = {
        ":5: redis.sentinels: 'nohost' is not \"host:port\"\n",
        ":4: redis.address: set address (one Redis) or sentinels",
        ":3: redis.master: sentinels need the name of the master they watch\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(msgs, want[i]) == NULL)
            fail_msg("missing [%s] in:\n%s", want[i], msgs);
    conf_free(&cfg);

    msgs[0] = '\0';
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "redis { address = \"localhost\";\n"
                               "  master = \"m x\"; username = u; }\n",
                               &cfg, msgs), -1);
    const char *want2[] = {
        ":3: redis.address: 'localhost' is not \"host:port\" or the path of a unix socket\n",
        ":4: redis.master: only with sentinels",
        ":4: redis.master: 'm x' is not a name",
        ":3: redis.username: needs a password\n",
    };
    for (size_t i = 0; i < sizeof(want2) / sizeof(want2[0]); i++)
        if (strstr(msgs, want2[i]) == NULL)
            fail_msg("missing [%s] in:\n%s", want2[i], msgs);
    conf_free(&cfg);
}

/* redis { tls { } }: the section turns TLS on; a client certificate
 * needs its key; a unix socket cannot carry it. */
static void
test_redis_tls(void **state)
{
    (void)state;
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "redis { address = \"127.0.0.1:6380\";\n"
                               "  tls { ca = /etc/ca.pem; server_name = redis.internal; }\n"
                               "  sentinel_tls = false; }\n",
                               &cfg, msgs), 0);
    assert_string_equal(msgs, "");
    assert_true(cfg.redis.tls);
    assert_false(cfg.redis.sentinel_tls);
    assert_string_equal(cfg.redis.tls_ca, "/etc/ca.pem");
    assert_string_equal(cfg.redis.tls_server_name, "redis.internal");
    conf_free(&cfg);

    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "redis { address = \"127.0.0.1:6379\"; }\n", &cfg, msgs), 0);
    assert_false(cfg.redis.tls);
    assert_true(cfg.redis.sentinel_tls);
    conf_free(&cfg);

    msgs[0] = '\0';
    assert_int_equal(load_text("hostname = mx.example.com\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "redis { address = \"/run/redis.sock\";\n"
                               "  tls { cert = /etc/c.pem; } }\n",
                               &cfg, msgs), -1);
    const char *want[] = {
        ":4: redis.tls: needs address = \"host:port\", not a unix socket\n",
        ":4: redis.tls.key: a client certificate needs both cert and key\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(msgs, want[i]) == NULL)
            fail_msg("missing [%s] in:\n%s", want[i], msgs);
    conf_free(&cfg);
}

/* A config with problems comes back holding nothing: what the checker
 * built before it found them (listeners, domains) is freed, so moatctl and
 * moatd, which exit at once on -1, leak nothing (LeakSanitizer under
 * `make asan` saw moatctl's listeners and domains leak). */
static void
test_failed_load_holds_nothing(void **state)
{
    (void)state;
    struct moat_config cfg;
    char msgs[4096] = "";
    assert_int_equal(load_text("hostname = mx.example.com\nstate_dir = /var/lib/moat\n"
                               "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
                               "domains { own.example { delivery = relay; relay_to = \"10.0.0.1:25\" } }\n"
                               "filters = [ \"rules\" ]\n"
                               "no_such_key = 1\n", &cfg, msgs), -1);
    assert_non_null(strstr(msgs, "no_such_key"));
    assert_null(cfg.listen.smtp.v);
    assert_int_equal(cfg.listen.smtp.n, 0);
    assert_null(cfg.domains);
    assert_int_equal(cfg.ndomains, 0);
    assert_null(cfg.filters);
    conf_free(&cfg);            /* harmless after a failed load */
}

static void
test_values(void **state)
{
    (void)state;
    uint64_t sz;
    unsigned s, ms;
    assert_int_equal(conf_parse_size("512k", &sz), 0);
    assert_int_equal(sz, 512 * 1024);
    assert_int_equal(conf_parse_size("12x", &sz), -1);
    assert_int_equal(conf_parse_size("-1", &sz), -1);
    assert_int_equal(conf_parse_duration("4h", &s, &ms), 0);
    assert_int_equal(s, 4 * 3600);
    assert_int_equal(conf_parse_duration("250ms", &s, &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(conf_parse_duration("5 days", &s, &ms), -1);
    assert_int_equal(conf_parse_duration("99999999d", &s, &ms), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntax_forms),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_schema),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_failed_load_holds_nothing),
        cmocka_unit_test(test_proxy_from_and_sender_login),
        cmocka_unit_test(test_mynetworks_verify_outbound),
        cmocka_unit_test(test_redis_sentinels),
        cmocka_unit_test(test_redis_tls),
        cmocka_unit_test(test_routes),
    };
    return cmocka_run_group_tests_name("conf", tests, NULL, NULL);
}
