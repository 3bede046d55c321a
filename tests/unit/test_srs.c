/* Unit tests: SRS addresses (common/srs.c). The MAC is computed here again
 * from the documented scheme with a known secret, so a change of scheme
 * shows, and addresses of any age can be made. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <pthread.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "../../common/mail.h"

static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
static unsigned char key[32];
static char dir[64];

static int
setup(void **state)
{
    (void)state;
    str_copy(dir, "/tmp/moat-srs-XXXXXX", sizeof(dir));
    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (unsigned char)(i * 7 + 1);
    char path[128];
    str_fmt(path, sizeof(path), "%s/srs.secret", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(key, 1, sizeof(key), f), sizeof(key));
    fclose(f);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    char path[128];
    str_fmt(path, sizeof(path), "%s/srs.secret", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}

/* SRS0=HASH=TT=domain=local@ours for a day number: HASH is the first 80
 * bits of HMAC-SHA256(secret, tt NUL domain NUL local), lower case, in
 * base32 (16 characters). */
static void
make(unsigned day, const char *domain, const char *local, char *out, size_t size)
{
    char tt[3] = { b32[(day % 1024) >> 5], b32[day % 32], '\0' };
    unsigned char msg[700], mac[EVP_MAX_MD_SIZE];
    size_t n = 0;
    memcpy(msg + n, tt, 2);
    n += 2;
    msg[n++] = '\0';
    memcpy(msg + n, domain, strlen(domain));
    n += strlen(domain);
    msg[n++] = '\0';
    memcpy(msg + n, local, strlen(local));
    n += strlen(local);
    for (size_t i = 0; i < n; i++)
        if (msg[i] >= 'A' && msg[i] <= 'Z')
            msg[i] = (unsigned char)(msg[i] + 32);
    unsigned maclen = 0;
    HMAC(EVP_sha256(), key, sizeof(key), msg, n, mac, &maclen);
    char hash[17];
    for (int i = 0; i < 16; i++) {
        unsigned bit = (unsigned)i * 5, byte = bit / 8, sh = bit % 8;
        unsigned v = ((unsigned)mac[byte] << 8 | mac[byte + 1]) >> (11 - sh);
        hash[i] = b32[v & 31];
    }
    hash[16] = '\0';
    str_fmt(out, size, "SRS0=%s=%s=%s=%s@fwd.example", hash, tt, domain, local);
}

static unsigned
today(void)
{
    return (unsigned)(time(NULL) / 86400);
}

static void
test_round_trip(void **state)
{
    (void)state;
    char srs[700], back[400];
    assert_int_equal(srs_forward(dir, "Alice.Smith@Sender.Example", "fwd.example", srs,
                                 sizeof(srs)), 0);
    char want[700];
    make(today(), "Sender.Example", "Alice.Smith", want, sizeof(want));
    if (strcmp(srs, want) != 0)         /* midnight between the two calls */
        make(today() - 1, "Sender.Example", "Alice.Smith", want, sizeof(want));
    assert_string_equal(srs, want);
    assert_int_equal(strlen(strchr(srs, '=') + 1) - strlen(strchr(srs + 5, '=')), 16);
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), 0);
    assert_string_equal(back, "Alice.Smith@Sender.Example");
    /* case changed on the way (some MTAs fold it): still ours */
    for (char *p = srs; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), 0);
    assert_string_equal(back, "ALICE.SMITH@SENDER.EXAMPLE");
    /* a local part with '=' and '@'-less parts */
    assert_int_equal(srs_forward(dir, "a=b@x.example", "fwd.example", srs, sizeof(srs)), 0);
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), 0);
    assert_string_equal(back, "a=b@x.example");
    /* the null sender stays null; an SRS address is not wrapped again */
    assert_int_equal(srs_forward(dir, "", "fwd.example", srs, sizeof(srs)), 0);
    assert_string_equal(srs, "");
    assert_int_equal(srs_forward(dir, "SRS0=x=y=z=w@other.example", "fwd.example", srs,
                                 sizeof(srs)), 0);
    assert_string_equal(srs, "SRS0=x=y=z=w@other.example");
}

static void
test_tampered_refused(void **state)
{
    (void)state;
    char srs[700], back[400], bad[700];
    make(today(), "sender.example", "alice", srs, sizeof(srs));
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), 0);
    /* any one character of the hash, the time, the domain or the local part */
    size_t at = (size_t)(strrchr(srs, '@') - srs);
    for (size_t i = 5; i < at; i++) {
        if (srs[i] == '=')
            continue;
        str_copy(bad, srs, sizeof(bad));
        bad[i] = bad[i] == 'b' ? 'c' : 'b';
        assert_int_equal(srs_reverse(dir, bad, back, sizeof(back)), -1);
    }
    /* the domain and local part split elsewhere: the same bytes, another address */
    char moved[700];
    make(today(), "sender.exampl", "ealice", moved, sizeof(moved));
    const char *h = moved + 5;
    str_fmt(bad, sizeof(bad), "SRS0=%.16s=%.2s=sender.example=alice@fwd.example", h, h + 17);
    assert_int_equal(srs_reverse(dir, bad, back, sizeof(back)), -1);
    /* the short hash of the old scheme, and hashes of the wrong length */
    str_fmt(bad, sizeof(bad), "SRS0=abcd=%.2s=sender.example=alice@fwd.example", srs + 22);
    assert_int_equal(srs_reverse(dir, bad, back, sizeof(back)), -1);
    str_fmt(bad, sizeof(bad), "SRS0=%.15s=%.2s=sender.example=alice@fwd.example", srs + 5,
            srs + 22);
    assert_int_equal(srs_reverse(dir, bad, back, sizeof(back)), -1);
    /* not SRS, or malformed */
    static const char *const junk[] = {
        "alice@fwd.example", "SRS0=@fwd.example", "SRS0=a=b=c@fwd.example",
        "SRS0=aaaaaaaaaaaaaaaa=aa==alice@fwd.example", "SRS0=aaaaaaaaaaaaaaaa=aa=x.example=@f",
        "SRS0=aaaaaaaaaaaaaaaa=a1=x.example=a@f", "SRS1=aaaaaaaaaaaaaaaa=aa=x.example=a@f",
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
        assert_int_equal(srs_reverse(dir, junk[i], back, sizeof(back)), -1);
}

static void
test_expiry(void **state)
{
    (void)state;
    char srs[700], back[400];
    make(today() - 21, "sender.example", "alice", srs, sizeof(srs));
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), 0);     /* 21 days: still good */
    make(today() - 23, "sender.example", "alice", srs, sizeof(srs));
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), -1);    /* expired */
    make(today() - 600, "sender.example", "alice", srs, sizeof(srs));
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), -1);
    make(today() + 2, "sender.example", "alice", srs, sizeof(srs));
    assert_int_equal(srs_reverse(dir, srs, back, sizeof(back)), -1);    /* from the future */
}

/* The first use makes the secret: threads (a queue role's local
 * deliveries) and roles making it at once must all end up with the one
 * that is on disk, or the addresses some of them wrote never verify. */
#define RACERS 8
static char fresh_dir[64];
static char made[RACERS][400];

static void *
racer(void *arg)
{
    size_t i = (size_t)arg;
    char sender[64];
    snprintf(sender, sizeof(sender), "user%zu@sender.example", i);
    if (srs_forward(fresh_dir, sender, "ours.example", made[i], sizeof(made[i])) < 0)
        made[i][0] = '\0';
    return NULL;
}

static void
test_secret_made_once_under_a_race(void **state)
{
    (void)state;
    for (int round = 0; round < 50; round++) {
        str_copy(fresh_dir, "/tmp/moat-srs-race-XXXXXX", sizeof(fresh_dir));
        assert_non_null(mkdtemp(fresh_dir));
        pthread_t t[RACERS];
        for (size_t i = 0; i < RACERS; i++)
            pthread_create(&t[i], NULL, racer, (void *)i);
        for (size_t i = 0; i < RACERS; i++)
            pthread_join(t[i], NULL);
        for (size_t i = 0; i < RACERS; i++) {
            char back[400], want[64];
            snprintf(want, sizeof(want), "user%zu@sender.example", i);
            assert_true(made[i][0] != '\0');
            assert_int_equal(srs_reverse(fresh_dir, made[i], back, sizeof(back)), 0);
            assert_string_equal(back, want);
        }
        char path[128];
        str_fmt(path, sizeof(path), "%s/srs.secret", fresh_dir);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(rmdir(fresh_dir), 0);     /* no temporary file left behind */
    }
}

/* A secret file that is there but broken is never replaced (mail in
 * flight names it): SRS fails until an admin looks. */
static void
test_broken_secret_is_kept(void **state)
{
    (void)state;
    char d[64], path[128], out[400];
    str_copy(d, "/tmp/moat-srs-broken-XXXXXX", sizeof(d));
    assert_non_null(mkdtemp(d));
    str_fmt(path, sizeof(path), "%s/srs.secret", d);
    FILE *f = fopen(path, "wb");
    fputs("short", f);
    fclose(f);
    assert_int_equal(srs_forward(d, "a@sender.example", "ours.example", out, sizeof(out)), -1);
    f = fopen(path, "rb");
    char buf[16] = "";
    assert_int_equal(fread(buf, 1, sizeof(buf), f), 5);
    fclose(f);
    unlink(path);
    rmdir(d);
}

static void
write_file(const char *path, const unsigned char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* The secret was replaced (the cluster's taken, cluster_share.c): the one
 * it replaced, srs.secret.prev, still verifies the addresses made with it
 * while they can be valid, and only then. */
static void
test_previous_secret_still_verifies(void **state)
{
    (void)state;
    char d[64], cur[128], prev[128], srs[700], back[400], out[400];
    str_copy(d, "/tmp/moat-srs-prev-XXXXXX", sizeof(d));
    assert_non_null(mkdtemp(d));
    str_fmt(cur, sizeof(cur), "%s/srs.secret", d);
    str_fmt(prev, sizeof(prev), "%s/srs.secret.prev", d);
    unsigned char other[32];
    memset(other, 'n', sizeof(other));
    write_file(cur, other, sizeof(other));
    make(today() - 3, "sender.example", "alice", srs, sizeof(srs));    /* made with key */
    assert_int_equal(srs_reverse(d, srs, back, sizeof(back)), -1);
    write_file(prev, key, sizeof(key));
    assert_int_equal(srs_reverse(d, srs, back, sizeof(back)), 0);
    assert_string_equal(back, "alice@sender.example");
    /* new addresses are made with the current secret, and verify */
    assert_int_equal(srs_forward(d, "bob@sender.example", "fwd.example", out, sizeof(out)), 0);
    assert_true(strncmp(out, srs, 21) != 0);
    assert_int_equal(srs_reverse(d, out, back, sizeof(back)), 0);
    /* tampered: refused by both */
    srs[5] = srs[5] == 'b' ? 'c' : 'b';
    assert_int_equal(srs_reverse(d, srs, back, sizeof(back)), -1);
    srs[5] = srs[5] == 'b' ? 'c' : 'b';
    /* replaced longer ago than an address lives: no longer asked */
    struct timespec old[2] = { { time(NULL) - 23 * 86400L, 0 }, { time(NULL) - 23 * 86400L, 0 } };
    assert_int_equal(utimensat(AT_FDCWD, prev, old, 0), 0);
    assert_int_equal(srs_reverse(d, srs, back, sizeof(back)), -1);
    unlink(prev);
    unlink(cur);
    rmdir(d);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tampered_refused),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_secret_made_once_under_a_race),
        cmocka_unit_test(test_broken_secret_is_kept),
        cmocka_unit_test(test_previous_secret_still_verifies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
