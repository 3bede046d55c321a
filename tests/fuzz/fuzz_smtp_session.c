/*
 * libFuzzer target: a whole SMTP session driven from a byte stream (in the
 * manner of Dovecot's fuzz harnesses). The input is what a client sends,
 * over a socketpair, to a real session of the smtp role's code: commands,
 * pipelining, DATA and BDAT, AUTH, into a real queue directory. The session
 * must end (EOF) without a crash, a leak or a sanitizer report.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../common/mail.h"
#include "../../gateway/smtp_private.h"

static struct moat_config cfg;
static struct smtp_server srv;
static struct smtp_listener lst;
static char dir[] = "/tmp/moat-fuzz-XXXXXX";

static void
quiet(const char *msg, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "%s\n", msg);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (mkdtemp(dir) == NULL)
        abort();
    char path[256], text[1024];
    snprintf(path, sizeof(path), "%s/moatd.conf", dir);
    snprintf(text, sizeof(text),
             "hostname = fuzz.example; state_dir = \"%s\";\n"
             "listen { smtp = [ \"127.0.0.1:25\" ] }\n"
             "domains { example.com { delivery = relay; relay_to = \"127.0.0.1:2\" } }\n"
             "limits { message_size = 2048; recipients = 5; errors = 1000; line_length = 600 }\n",
             dir);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    if (conf_load(path, &cfg, quiet, NULL) < 0)
        abort();
    snprintf(path, sizeof(path), "%s/queue/tmp", dir);
    mkdir_p(path, 0700);
    snprintf(path, sizeof(path), "%s/queue/incoming", dir);
    mkdir_p(path, 0700);
    log_init("fuzz", LOG_TO_SYSLOG, false);
    srv.cfg = &cfg;
    srv.base = event_base_new();
    srv.notify_fd = -1;
    srv.workq = workq_new(srv.base, 1);
    snprintf(srv.dir_tmp, sizeof(srv.dir_tmp), "%s/queue/tmp", dir);
    snprintf(srv.dir_incoming, sizeof(srv.dir_incoming), "%s/queue/incoming", dir);
    lst.srv = &srv;
    lst.kind = LISTEN_SMTP;
    return 0;
}

static void
empty_incoming(void)
{
    DIR *d = opendir(srv.dir_incoming);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char p[1400];
        if (de->d_name[0] != '.' && str_fmt(p, sizeof(p), "%s/%s", srv.dir_incoming, de->d_name) >= 0)
            unlink(p);
    }
    if (d)
        closedir(d);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 0;
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(40000),
                               .sin_addr.s_addr = htonl(0x7f000001) };
    srv.nconn++;
    smtp_session_new(&srv, &lst, sv[0], (struct sockaddr *)&sin, false);
    size_t off = 0;
    bool shut = false;
    char sink[65536];
    /* Bounded: the session ends at EOF; 100000 loop turns at the most. */
    for (int turn = 0; turn < 100000 && srv.nconn > 0; turn++) {
        if (off < size) {
            ssize_t n = write(sv[1], data + off, size - off);
            if (n > 0)
                off += (size_t)n;
        } else if (!shut) {
            shutdown(sv[1], SHUT_WR);
            shut = true;
        }
        while (read(sv[1], sink, sizeof(sink)) > 0)
            ;
        event_base_loop(srv.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        if (srv.dirsync_running || srv.dirsync_pending)
            usleep(50);
    }
    if (srv.nconn > 0)
        abort();        /* the session did not end at EOF */
    close(sv[1]);
    empty_incoming();
    return 0;
}
