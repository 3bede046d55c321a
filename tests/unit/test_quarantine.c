/* Unit tests: held mail and the one set of actions on it
 * (common/quarantine.c), on a state directory of its own: holding writes
 * what the web view and moatctl read back; releasing some recipients
 * queues a copy for them and keeps the rest held, releasing the last
 * moves the file itself; delete and the expiry sweep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>
#include <cmocka.h>
#include "../../common/mail.h"

static char state[] = "/tmp/moat-quar-XXXXXX";
static const char content[] = "Subject: held\r\n\r\nbody\r\n";

static int
setup(void **st)
{
    (void)st;
    if (mkdtemp(state) == NULL)
        return -1;
    for (int p = 0; p < PATH__COUNT; p++) {
        char dir[256];
        if (paths_made_at_start((enum state_path)p) &&
            (paths_get(state, (enum state_path)p, dir, sizeof(dir)) < 0 || mkdir_p(dir, 0700) < 0))
            return -1;
    }
    return 0;
}

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int
teardown(void **st)
{
    (void)st;
    return nftw(state, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A held message as the gateway writes it; its id. */
static void
hold(const char *const *rcpts, size_t n, time_t arrival, char id[QUEUE_ID_LEN + 1])
{
    char path[256], t[32];
    queue_id_new(id);
    assert_int_equal(paths_in(state, PATH_QUARANTINE, id, path, sizeof(path)), 0);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    snprintf(t, sizeof(t), "%lld", (long long)arrival);
    int r = qf_write_magic(fd) | qf_write_str(fd, QF_ARRIVAL, t) |
            qf_write_str(fd, QF_SENDER, "s@sender.example");
    for (size_t i = 0; i < n; i++)
        r |= qf_write_str(fd, QF_RCPT, rcpts[i]);
    r |= qf_write_rec(fd, QF_CONTENT, content, strlen(content));
    r |= quarantine_hold(fd, "example", "held by the example filter");
    r |= quarantine_hold_symbol(fd, "EXAMPLE_HOLD", 6.5, "held for review");
    r |= quarantine_hold_symbol(fd, "OTHER", -1.25, "a second one");
    r |= qf_write_rec(fd, QF_END, NULL, 0);
    assert_int_equal(r, 0);
    close(fd);
}

static bool
in_state(enum state_path dir, const char *id)
{
    char path[256];
    assert_int_equal(paths_in(state, dir, id, path, sizeof(path)), 0);
    return access(path, F_OK) == 0;
}

static bool
domain_x(const char *rcpt, const void *arg)
{
    (void)arg;
    return strstr(rcpt, "@x.example") != NULL;
}

static void
test_hold_reads_back(void **st)
{
    (void)st;
    static const char *const r[] = { "a@x.example" };
    char id[QUEUE_ID_LEN + 1], err[200];
    hold(r, 1, time(NULL), id);
    struct quarantine_held h;
    assert_int_equal(quarantine_open(state, id, NULL, NULL, NULL, &h, err, sizeof(err)), 0);
    assert_string_equal(h.m.verdict, "quarantine example: held by the example filter");
    char by[64];
    quarantine_decided_by(h.m.verdict, by, sizeof(by));
    assert_string_equal(by, "example");
    assert_true(quarantine_score(h.m.symbols) > 5.24 && quarantine_score(h.m.symbols) < 5.26);
    struct quarantine_symbol sym;
    const char *s = quarantine_symbol_next(h.m.symbols, &sym);
    assert_non_null(s);
    assert_string_equal(sym.name, "EXAMPLE_HOLD");
    assert_string_equal(sym.desc, "held for review");
    s = quarantine_symbol_next(s, &sym);
    assert_string_equal(sym.name, "OTHER");
    assert_null(quarantine_symbol_next(s, &sym));
    quarantine_close(&h);
    /* ids that are no held message read as missing */
    assert_int_equal(quarantine_open(state, "../accounts", NULL, NULL, NULL, &h, err, sizeof(err)), -1);
    assert_string_equal(err, "no such message in the quarantine");
    assert_int_equal(quarantine_open(state, "0123456789ABCDEF0123", NULL, NULL, NULL, &h, err,
                                     sizeof(err)), -1);
}

static void
test_release_some_then_the_rest(void **st)
{
    (void)st;
    static const char *const r[] = { "a@x.example", "b@y.example", "c@x.example" };
    char id[QUEUE_ID_LEN + 1], newid[QUEUE_ID_LEN + 1], err[200], path[256];
    hold(r, 3, time(NULL), id);
    struct quarantine_held h;
    /* another tenant's recipients only, and just one of them */
    assert_int_equal(quarantine_open(state, id, "C@X.example", domain_x, NULL, &h, err, sizeof(err)), 0);
    assert_int_equal(h.n, 1);
    assert_int_equal(quarantine_release(state, &h, "tester", newid, err, sizeof(err)), 0);
    quarantine_close(&h);
    assert_string_not_equal(newid, id);
    assert_true(in_state(PATH_QUEUE_INCOMING, newid) && in_state(PATH_QUARANTINE, id));
    struct queue_msg m;
    paths_in(state, PATH_QUEUE_INCOMING, newid, path, sizeof(path));
    assert_int_equal(qf_load(path, &m, err, sizeof(err)), 0);
    assert_int_equal(m.nrcpt, 1);
    assert_string_equal(m.rcpts[0].addr, "c@x.example");
    size_t len;
    char *c = qf_read_content(path, &m, &len);
    assert_int_equal(len, strlen(content));
    free(c);
    qf_msg_free(&m);
    /* c is done in the held file; a and b are still held */
    assert_int_equal(quarantine_open(state, id, "c@x.example", NULL, NULL, &h, err, sizeof(err)), -1);
    assert_int_equal(quarantine_open(state, id, NULL, NULL, NULL, &h, err, sizeof(err)), 0);
    assert_int_equal(h.n, 2);
    /* the rest: the file itself goes to the queue */
    assert_int_equal(quarantine_release(state, &h, "tester", newid, err, sizeof(err)), 0);
    quarantine_close(&h);
    assert_string_equal(newid, id);
    assert_false(in_state(PATH_QUARANTINE, id));
    assert_true(in_state(PATH_QUEUE_INCOMING, id));
    paths_in(state, PATH_QUEUE_INCOMING, id, path, sizeof(path));
    assert_int_equal(qf_load(path, &m, err, sizeof(err)), 0);
    assert_true(!m.rcpts[0].done && !m.rcpts[1].done && m.rcpts[2].done);
    qf_msg_free(&m);
}

static int
count(const char *path, struct queue_msg *m, void *arg)
{
    (void)path;
    (void)m;
    ++*(size_t *)arg;
    return 0;
}

static void
test_delete_and_expire(void **st)
{
    (void)st;
    static const char *const r[] = { "a@x.example", "b@y.example" };
    char id[QUEUE_ID_LEN + 1], old[QUEUE_ID_LEN + 1], fresh[QUEUE_ID_LEN + 1], err[200];
    hold(r, 2, time(NULL), id);
    struct quarantine_held h;
    assert_int_equal(quarantine_open(state, id, NULL, domain_x, NULL, &h, err, sizeof(err)), 0);
    assert_int_equal(quarantine_delete(state, &h, "tester", err, sizeof(err)), 0);
    quarantine_close(&h);
    assert_true(in_state(PATH_QUARANTINE, id));         /* b is still held */
    assert_int_equal(quarantine_open(state, id, NULL, domain_x, NULL, &h, err, sizeof(err)), -1);
    assert_int_equal(quarantine_open(state, id, NULL, NULL, NULL, &h, err, sizeof(err)), 0);
    assert_int_equal(quarantine_delete(state, &h, "tester", err, sizeof(err)), 0);
    quarantine_close(&h);
    assert_false(in_state(PATH_QUARANTINE, id));
    /* the sweep: what arrived before its time goes, the rest stays */
    size_t n0 = 0, n = 0;
    assert_int_equal(quarantine_list(state, count, &n0), 0);
    hold(r, 2, time(NULL) - 40 * 86400, old);
    hold(r, 2, time(NULL), fresh);
    assert_int_equal(quarantine_list(state, count, &n), 0);
    assert_int_equal(n, n0 + 2);
    assert_int_equal(quarantine_expire(state, time(NULL) - 30 * 86400), 1);
    assert_false(in_state(PATH_QUARANTINE, old));
    assert_true(in_state(PATH_QUARANTINE, fresh));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hold_reads_back),
        cmocka_unit_test(test_release_some_then_the_rest),
        cmocka_unit_test(test_delete_and_expire),
    };
    return cmocka_run_group_tests_name("quarantine", tests, setup, teardown);
}
