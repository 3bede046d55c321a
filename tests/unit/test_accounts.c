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
#include <sys/stat.h>
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

/* App passwords: saved and read back hashed; with TOTP on only they open
 * a protocol login; every check costs one hash, however many the account
 * holds; the use of one is recorded. */
static void
test_app_passwords(void **state)
{
    (void)state;
    char d[] = "/tmp/moat-app-XXXXXX", err[256], hash[256], used[300];
    assert_non_null(mkdtemp(d));
    snprintf(used, sizeof(used), "%s/app-used", d);
    assert_int_equal(mkdir(used, 0700), 0);
    assert_int_equal(accounts_hash("the password", hash, sizeof(hash), err, sizeof(err)), 0);
    struct account_entry u = { .kind = ACCT_USER, .addr = "alice@a.example", .hash = hash };
    char pw[ACCOUNT_APPS_MAX][ACCOUNT_APP_PW_LEN + 1];
    for (int i = 0; i < ACCOUNT_APPS_MAX; i++) {
        char name[16];
        snprintf(name, sizeof(name), "dev-%d", i);
        assert_int_equal(accounts_app_add(&u, name, pw[i], err, sizeof(err)), 0);
        assert_int_equal(strlen(pw[i]), ACCOUNT_APP_PW_LEN);
    }
    assert_int_equal(accounts_app_add(&u, "one-more", pw[0], err, sizeof(err)), -1);
    assert_int_equal(accounts_app_add(&u, "dev-1", pw[0], err, sizeof(err)), -1);
    assert_int_equal(accounts_app_add(&u, "bad name", pw[0], err, sizeof(err)), -1);
    u.totp = "JBSWY3DPEHPK3PXP";
    assert_int_equal(accounts_save(d, &u, 1, err, sizeof(err)), 0);
    struct account_app *apps = u.apps;
    struct accounts_file *a = accounts_load(d, err, sizeof(err));
    assert_non_null(a);
    const struct account_entry *e = accounts_find(a, ACCT_USER, "alice@a.example");
    assert_non_null(e);
    assert_int_equal(e->napps, ACCOUNT_APPS_MAX);
    assert_string_equal(e->apps[3].name, "dev-3");
    assert_memory_equal(e->apps[3].id, pw[3], ACCOUNT_APP_ID_LEN);
    assert_null(strstr(e->apps[3].hash, pw[3]));
    struct account_login *l = calloc(1, sizeof(*l));
    accounts_login_prepare(d, e, l);
    assert_true(l->apps_only);
    assert_int_equal(accounts_check_login(l, pw[5]), 1);
    assert_int_equal(accounts_check_login(l, "the password"), 0);    /* TOTP on */
    char tail[ACCOUNT_APP_PW_LEN + 1];
    memcpy(tail, pw[5], sizeof(tail));
    tail[ACCOUNT_APP_PW_LEN - 1] = tail[ACCOUNT_APP_PW_LEN - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(accounts_check_login(l, tail), 0);
    assert_true(accounts_app_last_used(d, &e->apps[5]) > 0);
    assert_int_equal(accounts_app_last_used(d, &e->apps[6]), 0);
    /* one hash each: the password refused, and a wrong app password
     * against sixteen, take about what one known check takes (the least
     * of five runs each, so that a loaded machine's pauses drop out) */
    double one = 1e9, refused = 1e9, many = 1e9;
    for (int i = 0; i < 5; i++) {
        double t0 = time_mono();
        assert_int_equal(accounts_check_hash(hash, "wrong"), 0);
        double t1 = time_mono();
        assert_int_equal(accounts_check_login(l, "the password"), 0);
        double t2 = time_mono();
        assert_int_equal(accounts_check_login(l, "zzzzzzzzzzzzzzzzzzzzzzzz"), 0);
        double t3 = time_mono();
        one = t1 - t0 < one ? t1 - t0 : one;
        refused = t2 - t1 < refused ? t2 - t1 : refused;
        many = t3 - t2 < many ? t3 - t2 : many;
    }
    assert_true(refused > one / 4 && many > one / 4 && many < one * 4);
    /* TOTP off: the password works, and app passwords still do */
    struct account_entry off = *e;
    off.totp = NULL;
    accounts_login_prepare(d, &off, l);
    assert_int_equal(accounts_check_login(l, "the password"), 1);
    assert_int_equal(accounts_check_login(l, pw[0]), 1);
    /* revoked: gone, with its record of use */
    struct account_entry *me = (struct account_entry *)e;
    assert_int_equal(accounts_app_del(d, me, "dev-5"), 0);
    assert_int_equal(accounts_app_del(d, me, "dev-5"), -1);
    accounts_login_prepare(d, me, l);
    assert_int_equal(accounts_check_login(l, pw[5]), 0);
    /* no such user: a dummy hash, refused */
    accounts_login_prepare(d, NULL, l);
    assert_int_equal(accounts_check_login(l, "the password"), 0);
    free(l);
    accounts_free(&a);
    free(apps);
    char path[300];
    snprintf(path, sizeof(path), "%s/accounts", d);
    unlink(path);
    for (int i = 0; i < ACCOUNT_APPS_MAX; i++) {
        char id[ACCOUNT_APP_ID_LEN + 1];
        memcpy(id, pw[i], ACCOUNT_APP_ID_LEN);
        id[ACCOUNT_APP_ID_LEN] = '\0';
        snprintf(path, sizeof(path), "%s/%s", used, id);
        unlink(path);
    }
    rmdir(used);
    rmdir(d);
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
        cmocka_unit_test(test_app_passwords),
        cmocka_unit_test(test_sender_ownership),
    };
    return cmocka_run_group_tests_name("accounts", tests, NULL, NULL);
}
