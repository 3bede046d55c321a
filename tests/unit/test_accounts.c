/* Unit tests: the accounts cache shared by a role's threads
 * (common/accounts.c). Readers on several threads hold snapshots while
 * the file is rewritten under them: under AddressSanitizer (make asan) a
 * snapshot freed while read is a use-after-free report, and the readers
 * check that every snapshot they see stays whole while they hold it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>
#include "../../common/mail.h"

#define USERS 40
static char dir[] = "/tmp/moat-acct-XXXXXX";
static volatile int stop;

static void
write_file(int gen)
{
    struct account_entry v[USERS];
    char addr[USERS][64];
    memset(v, 0, sizeof(v));
    for (int i = 0; i < USERS; i++) {
        snprintf(addr[i], sizeof(addr[i]), "user%d@gen%d.example", i, gen);
        v[i].kind = ACCT_USER;
        v[i].addr = addr[i];
        v[i].hash = "$y$j9T$salt$notarealhashnotarealhashnotarealhash";
        v[i].quota = (uint64_t)gen;
    }
    char err[256];
    assert_int_equal(accounts_save(dir, v, USERS, err, sizeof(err)), 0);
}

static void *
reader(void *arg)
{
    struct accounts_cache *c = arg;
    unsigned long n = 0;
    while (!stop) {
        const struct accounts_file *a = accounts_get(c);
        size_t count = accounts_count(a);
        const struct account_entry *first = accounts_at(a, 0);
        uint64_t gen = first ? first->quota : 0;
        for (size_t i = 0; i < count; i++) {
            const struct account_entry *e = accounts_at(a, i);
            /* the snapshot does not change under its holder */
            if (e->quota != gen || strstr(e->addr, "@gen") == NULL)
                abort();
        }
        accounts_put(&a);
        if (a != NULL)
            abort();
        n++;
    }
    return (void *)n;
}

static void
test_snapshots_survive_reloads(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(dir));
    write_file(1);
    char err[256];
    struct accounts_cache *c = accounts_cache_new(dir, err, sizeof(err));
    assert_non_null(c);
    pthread_t t[4];
    stop = 0;
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, reader, c);
    for (int gen = 2; gen < 300; gen++)
        write_file(gen);
    stop = 1;
    unsigned long reads = 0;
    for (int i = 0; i < 4; i++) {
        void *n;
        pthread_join(t[i], &n);
        reads += (unsigned long)n;
    }
    assert_true(reads > 0);
    /* and the cache ends on the last file */
    const struct accounts_file *a = accounts_get(c);
    assert_non_null(accounts_find(a, ACCT_USER, "user7@gen299.example"));
    accounts_put(&a);
    accounts_cache_free(&c);
    assert_null(c);
    char path[200];
    snprintf(path, sizeof(path), "%s/accounts", dir);
    unlink(path);
    rmdir(dir);
}

/* An unknown user's check fails, and still takes a password hash's time. */
static void
test_unknown_user_costs_a_hash(void **state)
{
    (void)state;
    char hash[256], err[200];
    assert_int_equal(accounts_hash("right", hash, sizeof(hash), err, sizeof(err)), 0);
    assert_int_equal(accounts_check_hash(hash, "right"), 1);
    assert_int_equal(accounts_check_hash(hash, "wrong"), 0);
    accounts_check_hash(NULL, "warm up");               /* makes the dummy hash */
    double t0 = time_mono();
    assert_int_equal(accounts_check_hash(hash, "wrong"), 0);
    double known = time_mono() - t0;
    t0 = time_mono();
    assert_int_equal(accounts_check_hash("", "wrong"), 0);
    assert_int_equal(accounts_check_hash(NULL, "wrong"), 0);
    double unknown = (time_mono() - t0) / 2;
    /* yescrypt takes milliseconds; an unchecked unknown user takes none */
    assert_true(unknown > known / 4);
}

/* Sender ownership: what an authenticated user may send as, by the
 * accounts and the sender_login policy of the address's domain. */
static void
test_sender_ownership(void **state)
{
    (void)state;
    char d[] = "/tmp/moat-own-XXXXXX", path[200], err[256];
    assert_non_null(mkdtemp(d));
    snprintf(path, sizeof(path), "%s/accounts", d);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("user alice@a.example $y$x\n"
          "user bob@a.example $y$x\n"
          "user adm@b.example $y$x role=admin\n"
          "user multi@c.example $y$x role=admin domains=d.example,e.example\n"
          "user root@a.example $y$x role=superadmin\n"
          "user carol@shared.example $y$x\n"
          "alias sales@b.example alice@a.example\n"
          "alias team@a.example bob@a.example,alice+x@a.example\n", f);
    fclose(f);
    struct accounts_file *a = accounts_load(d, err, sizeof(err));
    assert_non_null(a);
    struct domain_conf doms[4];
    memset(doms, 0, sizeof(doms));
    str_copy(doms[0].name, "a.example", sizeof(doms[0].name));
    str_copy(doms[1].name, "b.example", sizeof(doms[1].name));
    str_copy(doms[2].name, "shared.example", sizeof(doms[2].name));
    doms[2].sender_login_set = true;
    doms[2].sender_login = SENDER_LOGIN_DOMAIN;
    str_copy(doms[3].name, "open.example", sizeof(doms[3].name));
    doms[3].sender_login_set = true;
    doms[3].sender_login = SENDER_LOGIN_ANY;
    struct moat_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.domains = doms;
    cfg.ndomains = 4;
    cfg.smtp.sender_login = SENDER_LOGIN_STRICT;
    static const struct { const char *login, *addr; bool may; } cases[] = {
        { "alice@a.example", "alice@a.example", true },
        { "alice@a.example", "alice+news@a.example", true },
        { "alice@a.example", "ALICE@A.Example", true },
        { "alice@a.example", "bob@a.example", false },
        { "alice@a.example", "ceo@b.example", false },
        { "alice@a.example", "sales@b.example", true },        /* an alias of hers */
        { "alice@a.example", "sales+q@b.example", true },
        { "alice@a.example", "team@a.example", true },         /* her +tag is a target */
        { "alice@a.example", "x@open.example", true },         /* sender_login = any */
        { "alice@a.example", "x@shared.example", false },      /* = domain, not hers */
        { "alice@a.example", "x@elsewhere.example", false },   /* strict by default */
        { "alice@a.example", "alice", false },
        { "alice@a.example", "", false },
        { "alice@a.example", "alice@", false },
        { "bob@a.example", "team@a.example", true },
        { "bob@a.example", "sales@b.example", false },
        { "carol@shared.example", "dave@shared.example", true },
        { "carol@shared.example", "alice@a.example", false },
        { "adm@b.example", "ceo@b.example", true },            /* admin of b */
        { "adm@b.example", "alice@a.example", false },
        { "multi@c.example", "x@d.example", true },
        { "multi@c.example", "x@e.example", true },
        { "multi@c.example", "multi@c.example", true },
        { "multi@c.example", "other@c.example", false },       /* not in its domains= */
        { "root@a.example", "ceo@b.example", true },
        { "root@a.example", "anyone@anywhere.example", true },
        { "gone@a.example", "gone@a.example", false },         /* no such user */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (accounts_may_send_as(a, &cfg, cases[i].login, cases[i].addr) != cases[i].may)
            fail_msg("%s as <%s>: want %d", cases[i].login, cases[i].addr, cases[i].may);
    cfg.smtp.sender_login = SENDER_LOGIN_DOMAIN;
    assert_true(accounts_may_send_as(a, &cfg, "alice@a.example", "bob@a.example"));
    assert_false(accounts_may_send_as(a, &cfg, "alice@a.example", "ceo@b.example"));
    cfg.smtp.sender_login = SENDER_LOGIN_ANY;
    assert_true(accounts_may_send_as(a, &cfg, "alice@a.example", "ceo@b.example"));
    assert_false(accounts_may_send_as(a, &cfg, "gone@a.example", "x@b.example"));

    static const struct { const char *login, *want; } doms_cases[] = {
        { "alice@a.example", "a.example b.example" },
        { "bob@a.example", "a.example" },
        { "adm@b.example", "b.example" },
        { "multi@c.example", "c.example d.example e.example" },
        { "root@a.example", "a.example b.example shared.example open.example" },
        { "gone@a.example", "" },
    };
    for (size_t i = 0; i < sizeof(doms_cases) / sizeof(doms_cases[0]); i++) {
        char **v, got[200] = "";
        size_t n = accounts_sender_domains(a, &cfg, doms_cases[i].login, &v);
        for (size_t k = 0; k < n; k++)
            snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", k ? " " : "", v[k]);
        accounts_domains_free(&v, n);
        assert_null(v);
        assert_string_equal(got, doms_cases[i].want);
    }
    accounts_free(&a);
    unlink(path);
    rmdir(d);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshots_survive_reloads),
        cmocka_unit_test(test_unknown_user_costs_a_hash),
        cmocka_unit_test(test_sender_ownership),
    };
    return cmocka_run_group_tests_name("accounts", tests, NULL, NULL);
}
