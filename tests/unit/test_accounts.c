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
#include "../../common/common.h"

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

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshots_survive_reloads),
        cmocka_unit_test(test_unknown_user_costs_a_hash),
    };
    return cmocka_run_group_tests_name("accounts", tests, NULL, NULL);
}
