/* Unit tests: the queue file format, the reply table, DSN status codes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>
#include "../../common/mail.h"
#include "../../delivery/delivery.h"

static char dir[] = "/tmp/moat-qf-XXXXXX";

static int
setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static void
test_roundtrip_and_status(void **state)
{
    (void)state;
    struct queue_msg m;
    memset(&m, 0, sizeof(m));
    queue_id_new(m.id);
    assert_true(queue_id_valid(m.id));
    m.arrival = 1700000000;
    char sender[] = "s@example.com", client[] = "192.0.2.1", helo[] = "h.example";
    m.sender = sender;
    m.client = client;
    m.helo = helo;
    m.body_8bit = true;
    m.ret_full = true;
    m.envid = (char[]){ "env+2B1" };
    struct qf_rcpt r[2] = { { .addr = (char[]){ "a@example.com" } },
                            { .addr = (char[]){ "b@example.com" }, .notify = (char[]){ "NEVER" },
                              .orcpt = (char[]){ "rfc822;b+40example.com" } } };
    m.rcpts = r;
    m.nrcpt = 2;
    char content[200000];
    for (size_t i = 0; i < sizeof(content); i++)
        content[i] = (char)(i % 251);
    assert_int_equal(qf_store(dir, dir, &m, content, sizeof(content)), 0);

    char path[256], err[256];
    snprintf(path, sizeof(path), "%s/%s", dir, m.id);
    struct queue_msg l;
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), 0);
    assert_string_equal(l.sender, "s@example.com");
    assert_int_equal(l.nrcpt, 2);
    assert_true(l.body_8bit);
    /* DSN (RFC 3461) survives a rewrite: forwards, releases */
    assert_true(l.ret_full);
    assert_string_equal(l.envid, "env+2B1");
    assert_null(l.rcpts[0].notify);
    assert_string_equal(l.rcpts[1].notify, "NEVER");
    assert_string_equal(l.rcpts[1].orcpt, "rfc822;b+40example.com");
    assert_int_equal(l.arrival, 1700000000);
    assert_int_equal(l.content_len, sizeof(content));
    size_t len;
    char *c = qf_read_content(path, &l, &len);
    assert_non_null(c);
    assert_int_equal(len, sizeof(content));
    assert_memory_equal(c, content, len);
    free(c);
    qf_msg_free(&l);

    /* status records after END, then a torn one: ignored */
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_int_equal(qf_write_str(fd, QF_DONE, "1"), 0);
    assert_int_equal(qf_write_str(fd, QF_LAST_REPLY, "0 451 4.3.0 later"), 0);
    assert_int_equal(qf_write_str(fd, QF_ATTEMPT, "3 1700000600"), 0);
    /* what an alias recipient reached: read back once each, bad index skipped */
    assert_int_equal(qf_write_str(fd, QF_SERVED, "0 alice@example.com"), 0);
    assert_int_equal(qf_write_str(fd, QF_SERVED, "0 Alice@example.com"), 0);
    assert_int_equal(qf_write_str(fd, QF_SERVED, "0 out@elsewhere.org"), 0);
    assert_int_equal(qf_write_str(fd, QF_SERVED, "7 x@example.com"), 0);
    assert_int_equal(qf_write_str(fd, QF_SERVED, "0"), 0);
    assert_int_equal(write(fd, "D\0\0\0\x09" "0", 6), 6);
    close(fd);
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), 0);
    assert_false(l.rcpts[0].done);
    assert_true(l.rcpts[1].done);
    assert_string_equal(l.rcpts[0].last_reply, "451 4.3.0 later");
    assert_int_equal(l.attempts, 3);
    assert_int_equal(l.next_try, 1700000600);
    assert_int_equal(l.rcpts[0].nserved, 2);
    assert_int_equal(l.rcpts[0].nserved_saved, 2);
    assert_true(qf_rcpt_was_served(&l.rcpts[0], "ALICE@example.com"));
    assert_true(qf_rcpt_was_served(&l.rcpts[0], "out@elsewhere.org"));
    assert_false(qf_rcpt_was_served(&l.rcpts[0], "bob@example.com"));
    assert_int_equal(l.rcpts[1].nserved, 0);
    qf_msg_free(&l);
    unlink(path);
}

/* A new queue file at path: the envelope (one sender, one recipient) and
 * body as its content; the descriptor, at the content's end. */
static int
file_with(const char *path, const char *body)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(qf_write_magic(fd), 0);
    assert_int_equal(qf_write_str(fd, QF_SENDER, "s@example.com"), 0);
    assert_int_equal(qf_write_str(fd, QF_RCPT, "a@example.com"), 0);
    off_t off;
    assert_int_equal(qf_content_begin(fd, &off), 0);
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    assert_int_equal(qf_content_end(fd, off, strlen(body)), 0);
    return fd;
}

static void
test_headers_skips_and_content_record(void **state)
{
    (void)state;
    char path[256], err[256];
    snprintf(path, sizeof(path), "%s/hdrs", dir);
    int fd = file_with(path, "Received: x\r\nAuthentication-Results: forged\r\n"
                             "Subject: s\r\n\r\nbody\r\n");
    assert_int_equal(qf_write_str(fd, QF_HEADER, "Authentication-Results: mx; none\r\n"), 0);
    assert_int_equal(qf_write_str(fd, QF_HEADER, "X-Tag: yes\r\n"), 0);
    char skip[64];
    snprintf(skip, sizeof(skip), "%zu %zu", strlen("Received: x\r\n"),
             strlen("Authentication-Results: forged\r\n"));
    assert_int_equal(qf_write_str(fd, QF_SKIP, skip), 0);
    assert_int_equal(qf_write_str(fd, QF_VERDICT, "quarantine example: held"), 0);
    assert_int_equal(qf_write_str(fd, QF_SYMBOL, "EXAMPLE 1.00 a symbol"), 0);
    assert_int_equal(qf_write_rec(fd, QF_END, NULL, 0), 0);
    close(fd);
    struct queue_msg l;
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), 0);
    assert_string_equal(l.verdict, "quarantine example: held");
    assert_string_equal(l.symbols, "EXAMPLE 1.00 a symbol\n");
    size_t len;
    char *c = qf_read_content(path, &l, &len);
    const char *want = "Authentication-Results: mx; none\r\nX-Tag: yes\r\nReceived: x\r\n"
                       "Subject: s\r\n\r\nbody\r\n";
    assert_non_null(c);
    assert_int_equal(len, strlen(want));
    assert_string_equal(c, want);
    free(c);
    qf_msg_free(&l);
    unlink(path);
}

/* A PAD record may stand anywhere before END (the format's rule), also
 * between two CONTENT chunks: qf_load and qf_read_content both skip it. */
static void
test_pad_between_content_chunks(void **state)
{
    (void)state;
    char path[256], err[256];
    snprintf(path, sizeof(path), "%s/pad", dir);
    int fd = file_with(path, "Subject: s\r\n\r\nfirst ");
    assert_int_equal(qf_write_str(fd, QF_PAD, "0123456789"), 0);
    off_t off;
    assert_int_equal(qf_content_begin(fd, &off), 0);
    assert_int_equal(write(fd, "second\r\n", 8), 8);
    assert_int_equal(qf_content_end(fd, off, 8), 0);
    assert_int_equal(qf_write_rec(fd, QF_END, NULL, 0), 0);
    close(fd);
    struct queue_msg l;
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), 0);
    size_t len;
    char *c = qf_read_content(path, &l, &len);
    assert_non_null(c);
    assert_string_equal(c, "Subject: s\r\n\r\nfirst second\r\n");
    free(c);
    qf_msg_free(&l);
    unlink(path);
}

/* The room kept after the content (qf_room_keep) holds the chain's records
 * and END: overwritten in place when they fit (the size stays), the file
 * cut after END when they fill it but a few bytes, grown when they are
 * more. In every case the file reads back as one message, with status
 * records appended after END, and before qf_room_end it is no message. */
static void
room_case(size_t hdrlen, bool same_size)
{
    char path[256], err[256];
    snprintf(path, sizeof(path), "%s/room", dir);
    const char *body = "Subject: s\r\n\r\nbody\r\n";
    int fd = file_with(path, body);
    off_t off;
    size_t len;
    assert_int_equal(qf_room_keep(fd, 2048, &off, &len), 0);
    assert_true(len >= 2048 && len < 2048 + 4096);
    assert_int_equal((off + (off_t)len) % 4096, 0);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), off);
    assert_int_equal(lseek(fd, 0, SEEK_END), off + (off_t)len);
    lseek(fd, off, SEEK_SET);
    struct queue_msg l;
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), -1);     /* no END yet */
    /* one header record of hdrlen bytes in all (5 of them the record's) */
    char *h = malloc(hdrlen);
    memcpy(h, "X-Tag: ", 7);
    memset(h + 7, 'a', hdrlen - 5 - 9);
    memcpy(h + hdrlen - 5 - 2, "\r\n", 2);
    assert_int_equal(qf_write_rec(fd, QF_HEADER, h, hdrlen - 5), 0);
    assert_int_equal(qf_room_end(fd, off, len), 0);
    off_t size = lseek(fd, 0, SEEK_END);
    if (same_size)
        assert_int_equal(size, off + (off_t)len);
    else
        assert_int_equal(size, off + (off_t)hdrlen + 5);
    close(fd);
    fd = open(path, O_WRONLY | O_APPEND);
    assert_int_equal(qf_write_str(fd, QF_DONE, "0"), 0);
    close(fd);
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), 0);
    assert_true(l.rcpts[0].done);
    assert_int_equal(l.headers_len, hdrlen - 5);
    size_t clen;
    char *c = qf_read_content(path, &l, &clen);
    assert_non_null(c);
    assert_int_equal(clen, hdrlen - 5 + strlen(body));
    assert_memory_equal(c + hdrlen - 5, body, strlen(body));
    free(c);
    free(h);
    qf_msg_free(&l);
    unlink(path);
}

static void
test_room_for_the_chain_records(void **state)
{
    (void)state;
    room_case(300, true);           /* a PAD over the rest, END last */
    room_case(1000, true);
    /* the room's exact size less END (computed from a first keep) */
    char path[256];
    snprintf(path, sizeof(path), "%s/probe", dir);
    int fd = file_with(path, "Subject: s\r\n\r\nbody\r\n");
    off_t off;
    size_t len;
    assert_int_equal(qf_room_keep(fd, 2048, &off, &len), 0);
    close(fd);
    unlink(path);
    room_case(len - 5, true);       /* END fills the room exactly */
    room_case(len - 7, false);      /* 2 bytes left: too few for a PAD, cut */
    room_case(len + 3000, false);   /* more than the room: the file grows */
}

static void
test_missing_end_is_not_a_message(void **state)
{
    (void)state;
    char path[256], err[256];
    snprintf(path, sizeof(path), "%s/noend", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_int_equal(qf_write_magic(fd), 0);
    assert_int_equal(qf_write_str(fd, QF_SENDER, "s@example.com"), 0);
    assert_int_equal(qf_write_str(fd, QF_RCPT, "a@example.com"), 0);
    assert_int_equal(qf_write_rec(fd, QF_CONTENT, "Subject: x\r\n", 12), 0);
    close(fd);
    struct queue_msg l;
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no END record"));
    /* a garbage file */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "hello", 5), 5);
    close(fd);
    assert_int_equal(qf_load(path, &l, err, sizeof(err)), -1);
    unlink(path);
}

static void
test_reply_table(void **state)
{
    (void)state;
    char buf[600];
    size_t n = reply_format(buf, sizeof(buf), R_QUEUED, "ABC", true);
    assert_string_equal(buf, "250 2.0.0 Ok: queued as ABC\r\n");
    assert_int_equal(n, strlen(buf));
    reply_format(buf, sizeof(buf), R_RELAY_DENIED, "x@y.z", true);
    assert_string_equal(buf, "554 5.7.1 <x@y.z>: Relay access denied\r\n");
    reply_format(buf, sizeof(buf), R_DATA_GO, NULL, true);
    assert_string_equal(buf, "354 End data with <CR><LF>.<CR><LF>\r\n");
    char tiny[16];
    n = reply_format(tiny, sizeof(tiny), R_QUEUED, "ABCDEFGHIJKLMNOP", true);
    assert_int_equal(n, 15);
    assert_memory_equal(tiny + 13, "\r\n", 2);
    for (int id = 0; id < R__COUNT; id++)
        assert_non_null(reply_get((enum reply_id)id)->text);
}

/* The queue role's replies, each against the literal it wrote before the
 * table had it (snprintf of the old format), so the bytes in the queue
 * file, the log and the DSN stay the same. */
static void
test_reply_line(void **state)
{
    (void)state;
    static const struct {
        enum reply_id id;
        const char *a, *b, *old;
    } cases[] = {
        { R_DNS_LOOKUP_FAILED, "ex.org", NULL, "451 4.4.3 Host or domain name lookup failed for %s" },
        { R_DOMAIN_NOT_FOUND, "ex.org", NULL, "550 5.1.2 Host or domain name not found: %s" },
        { R_NULL_MX, "ex.org", NULL, "550 5.1.10 Domain %s does not accept mail (null MX)" },
        { R_RELAY_UNRESOLVED, "hub:25", NULL, "451 4.4.3 Cannot resolve relay host %s" },
        { R_DNS_ERROR, NULL, NULL, "451 4.4.3 DNS resolver error" },
        { R_DEST_UNREACHABLE, "connect to mx[1.2.3.4]:25: refused", NULL, "451 4.4.1 %s" },
        { R_CONN_LOST, "mx[1.2.3.4]:25", "timeout", "451 4.4.2 lost connection with %s: %s" },
        { R_NO_SMTPUTF8, "mx[1.2.3.4]:25", NULL,
          "554 5.6.7 %s does not support SMTPUTF8, which this message needs" },
        { R_EXPIRED, "451 4.4.1 down", NULL, "554 5.4.7 delivery time expired; last error: %s" },
        { R_LOOP_RECEIVED, "30", NULL, "554 5.4.6 mail forwarding loop: more than %s Received headers" },
        { R_LOOP_DELIVERED_TO, "a@ex.org", NULL, "554 5.4.6 <%s>: mail forwarding loop (Delivered-To)" },
        { R_SRS_ONLY_BOUNCES, "SRS0=x@ex.org", NULL, "550 5.7.1 <%s>: an SRS address takes only bounces" },
        { R_SRS_RETURNED, "SRS0=x@ex.org", "b@other.org", "250 2.1.5 <%s>: returned to <%s> (SRS)" },
        { R_LIST_REFUSED_SENDER, "team@ex.org", "x@other.org",
          "550 5.7.1 <%s>: this list does not take mail from <%s>" },
        { R_UNKNOWN_USER, "nobody@ex.org", NULL, "550 5.1.1 <%s>: Recipient address rejected: User unknown" },
        { R_NOT_A_MAILBOX, "../x@ex.org", NULL, "550 5.1.3 <%s>: not a mailbox name" },
        { R_MAILBOX_FULL, "a@ex.org", "quota 10 bytes", "452 4.2.2 <%s>: mailbox full: %s" },
        { R_LOCAL_FAILED, "a@ex.org", "No space left", "451 4.3.0 <%s>: local delivery failed: %s" },
        { R_SRS_REWRITE_FAILED, "a@ex.org", NULL, "451 4.3.0 <%s>: cannot rewrite the sender for forwarding" },
        { R_FORWARD_QUEUE_FAILED, NULL, NULL, "451 4.3.0 cannot queue the forwarded copy" },
        { R_ACCOUNTS_UNREADABLE, NULL, NULL, "451 4.3.0 the accounts file cannot be read" },
        { R_DELIVERED, "a@ex.org, b@ex.org (Junk)", NULL, "250 2.0.0 delivered to %s" },
        { R_FORWARDED, "2 addresses", NULL, "250 2.0.0 forwarded to %s" },
    };
    char got[1400], want[1400];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* the cases' format strings are the old literals: their %s take a, b */
        snprintf(want, sizeof(want), cases[i].old, cases[i].a, cases[i].b);
        size_t n = reply_line(got, sizeof(got), cases[i].id, cases[i].a, cases[i].b);
        assert_string_equal(got, want);
        assert_int_equal(n, strlen(want));
        /* cut as snprintf cuts, at every size */
        for (size_t size = 1; size <= strlen(want) + 1; size++) {
            char cut_got[1400], cut_want[1400];
            snprintf(cut_want, size, cases[i].old, cases[i].a, cases[i].b);
            n = reply_line(cut_got, size, cases[i].id, cases[i].a, cases[i].b);
            assert_string_equal(cut_got, cut_want);
            assert_int_equal(n, strlen(cut_want));
        }
    }
    reply_text(got, sizeof(got), R_FORWARDED, "1 address", NULL);
    assert_string_equal(got, "forwarded to 1 address");
    /* a missing argument is empty, never "(null)" */
    reply_line(got, sizeof(got), R_CONN_LOST, "mx[1.2.3.4]:25", NULL);
    assert_string_equal(got, "451 4.4.2 lost connection with mx[1.2.3.4]:25: ");
    assert_int_equal(reply_line(got, 0, R_DNS_ERROR, NULL, NULL), 0);
    /* every text holds only %s, at most two */
    for (int id = 0; id < R__COUNT; id++) {
        const char *t = reply_get((enum reply_id)id)->text;
        int n = 0;
        for (const char *p = strchr(t, '%'); p; p = strchr(p + 2, '%')) {
            assert_int_equal(p[1], 's');
            n++;
        }
        assert_true(n <= 2);
    }
}

static void
test_bounce_status(void **state)
{
    (void)state;
    char s[16];
    bounce_status("550 5.1.1 <x>: User unknown", s, sizeof(s));
    assert_string_equal(s, "5.1.1");
    bounce_status("554 Transaction failed", s, sizeof(s));
    assert_string_equal(s, "5.0.0");
    bounce_status("451 4.7.1 later", s, sizeof(s));
    assert_string_equal(s, "4.7.1");
    bounce_status("garbage", s, sizeof(s));
    assert_string_equal(s, "5.0.0");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_and_status),
        cmocka_unit_test(test_headers_skips_and_content_record),
        cmocka_unit_test(test_pad_between_content_chunks),
        cmocka_unit_test(test_room_for_the_chain_records),
        cmocka_unit_test(test_missing_end_is_not_a_message),
        cmocka_unit_test(test_reply_table),
        cmocka_unit_test(test_reply_line),
        cmocka_unit_test(test_bounce_status),
    };
    int rc = cmocka_run_group_tests_name("queue_file", tests, setup, NULL);
    rmdir(dir);
    return rc;
}
