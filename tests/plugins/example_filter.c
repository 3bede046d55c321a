/*
 * example_filter.c -- a small filter plugin, built out of tree: it includes
 * only filters/filter.h and is loaded by moatd from filter_dir as
 * example.so. The tests build it with `cc -shared -fPIC`.
 *
 * It looks at the Subject of a message: "REJECTME" is rejected, "TEMPME"
 * tempfailed, "DISCARDME" discarded, "HOLDME" quarantined, "SLEEPME" takes
 * longer than its deadline, "SLOWME" takes 0.6 s (within it) and goes on
 * as for any other subject, "SPINME" works (on the CPU) until filter_expired
 * says its deadline passed, "FAILME" fails; everything else is tagged with
 * an X-Example header, a symbol and an Authentication-Results method result.
 * Before DATA: clients from 127.0.0.9 are told to come back later, HELO
 * evil.example is refused, MAIL from spammer@bad.example is refused, RCPT
 * blocked@example.com is refused and later@example.com tempfailed.
 * Its config section: example { tag = "..."; }.
 *
 * Built with -DEXAMPLE_CHAINED it is the plugin "chained" instead: it
 * needs every plugin before it (the default), so the chain runs it in the
 * same worker job as the one before it; it answers "DOZEME" (longer than
 * its deadline, without asking filter_expired) and "TWIRLME" (works until
 * filter_expired) as example does SLEEPME and SPINME, and adds a header
 * with what it read of the plugins before it: the score, their first
 * symbol and the note example.tag.
 *
 * Built with -DEXAMPLE_PATIENT it is the plugin "patient": example with a
 * deadline of 3 s instead of 1 s, for a batch whose first hook's timeout
 * is longer than the next one's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include "filter.h"

#ifdef EXAMPLE_CHAINED
#define EXAMPLE_NAME "chained"
#define SLEEP_WORD "DOZEME"
#define SPIN_WORD "TWIRLME"
#elif defined(EXAMPLE_PATIENT)
#define EXAMPLE_NAME "patient"
#define SLEEP_WORD "SLEEPME"
#define SPIN_WORD "SPINME"
#else
#define EXAMPLE_NAME "example"
#define SLEEP_WORD "SLEEPME"
#define SPIN_WORD "SPINME"
#endif

/* Weak: the plugin still loads into a moatd without filter_expired (it
 * is NULL there), as a plugin that uses a newer call optionally would. */
#pragma weak filter_expired

struct example {
    char tag[128];
};

static int
example_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    (void)err;
    (void)errsize;
    struct example *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return -1;
    const char *tag = filter_config_get(c, "tag");
    strncpy(e->tag, tag ? tag : "seen", sizeof(e->tag) - 1);
    *ctx_r = e;
    return 0;
}

static void
example_free(void *ctx)
{
    free(ctx);
}

/* Does the header block contain a Subject with this word? */
static int
subject_has(const struct filter_msg *m, const char *word)
{
    const char *p = m->data, *end = m->data + m->len;
    size_t wl = strlen(word);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le - p <= 1)
            return 0;       /* the empty line: end of the header */
        if ((size_t)(le - p) > 8 && strncasecmp(p, "Subject:", 8) == 0)
            for (const char *q = p; q + wl <= le; q++)
                if (memcmp(q, word, wl) == 0)
                    return 1;
        p = nl ? nl + 1 : end;
    }
    return 0;
}

static enum filter_status
example_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct example *e = ctx;
    if (subject_has(m, "FAILME"))
        return FILTER_ERROR;
    if (subject_has(m, SLEEP_WORD))
        usleep(1500 * 1000);
    if (subject_has(m, "SLOWME"))
        usleep(600 * 1000);
    if (subject_has(m, SPIN_WORD)) {     /* long work, 15 s at most */
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        volatile unsigned long spins = 0;
        do {
            for (unsigned i = 0; i < 100000; i++)
                spins++;
            if (filter_expired && filter_expired(r))
                return FILTER_DONE;     /* the chain has answered: stop */
            clock_gettime(CLOCK_MONOTONIC, &now);
        } while (now.tv_sec - t0.tv_sec < 15);
    }
    if (subject_has(m, "REJECTME")) {
        filter_symbol(r, "EXAMPLE_REJECT", 10.0, "subject asks for it");
        filter_verdict(r, FILTER_REJECT, "The example filter refuses this message");
    } else if (subject_has(m, "TEMPME")) {
        filter_verdict(r, FILTER_TEMPFAIL, "The example filter wants you to try later");
    } else if (subject_has(m, "DISCARDME")) {
        filter_verdict(r, FILTER_DISCARD, NULL);
    } else if (subject_has(m, "HOLDME")) {
        filter_symbol(r, "EXAMPLE_HOLD", 6.5, "held for review");
        filter_verdict(r, FILTER_QUARANTINE, "held by the example filter");
    } else {
#ifdef EXAMPLE_CHAINED
        char saw[512];
        const char *tag = filter_note_get(r, "example.tag");
        const char *first = filter_symbol_at(r, 0, NULL);
        snprintf(saw, sizeof(saw), "score=%.2f first=%s tag=%s", filter_score(r),
                 first ? first : "-", tag ? tag : "-");
        filter_add_header(r, "X-Chained-Saw", saw);
        filter_symbol(r, "CHAINED_SEEN", 0.25, "the chained filter saw it");
#else
        filter_note_set(r, "example.tag", e->tag);
        filter_symbol(r, "EXAMPLE_SEEN", 0.5, "the example filter saw it");
#endif
        filter_add_header(r, "X-Example", e->tag);
        filter_auth_result(r, "x-example=pass header.from=example");
    }
    return FILTER_DONE;
}

static enum filter_status
example_connect(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    (void)ctx;
    if (strcmp(m->client_addr, "127.0.0.9") == 0)
        filter_verdict(r, FILTER_TEMPFAIL, "Not now, 127.0.0.9");
    return FILTER_DONE;
}

static enum filter_status
example_helo(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    (void)ctx;
    if (strcmp(m->helo, "evil.example") == 0)
        filter_verdict(r, FILTER_REJECT, "That HELO is not welcome");
    return FILTER_DONE;
}

static enum filter_status
example_mail(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    (void)ctx;
    if (strcmp(m->sender, "spammer@bad.example") == 0) {
        filter_symbol(r, "EXAMPLE_BAD_SENDER", 5.0, "a known spammer");
        filter_verdict(r, FILTER_REJECT, "Sender refused by the example filter");
    }
    return FILTER_DONE;
}

static enum filter_status
example_rcpt(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    (void)ctx;
    const char *rcpt = m->rcpts[m->nrcpt - 1];
    if (strcmp(rcpt, "blocked@example.com") == 0)
        filter_verdict(r, FILTER_REJECT, "Recipient refused by the example filter");
    else if (strcmp(rcpt, "later@example.com") == 0)
        filter_verdict(r, FILTER_TEMPFAIL, "Recipient busy, try later");
    return FILTER_DONE;
}

#ifndef EXAMPLE_ABI            /* the tests build it for other ABIs too */
#define EXAMPLE_ABI FILTER_ABI_VERSION
#endif
const struct filter_plugin moat_filter_plugin = {
    .abi = EXAMPLE_ABI,
    .name = EXAMPLE_NAME,
    .init = example_init,
    .free = example_free,
    .on_connect = example_connect,
    .on_helo = example_helo,
    .on_mail = example_mail,
    .on_rcpt = example_rcpt,
    .on_data_end = example_data_end,
#ifdef EXAMPLE_PATIENT
    .timeout_ms = 3000,
#else
    .timeout_ms = 1000,
#endif
    .on_failure = FILTER_TEMPFAIL,
#ifndef EXAMPLE_CHAINED
    .needs = FILTER_NEEDS_NONE,     /* it reads nothing of the other plugins */
#endif
};
