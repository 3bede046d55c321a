/* Fuzz target: the message as text for the content filters (filters/text.c
 * over the shared MIME parse): HTML rendering, entities, URL and host
 * extraction, the paragraph rendering and the Bayes tokenizer after it. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../filters/filters.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct filter_mime *mm = mime_parse((const char *)data, size);
    const struct filter_text *t = mime_text(mm);
    size_t total = strlen(t->subject) + strlen(t->body) + t->rawbody_len;
    if (strlen(t->body) != t->body_len)
        __builtin_trap();
    for (size_t i = 0; i < t->nuri; i++)
        total += strlen(t->uris[i]) + strlen(t->hosts[i]);
    struct bayes_tokens bt;
    bayes_tokenize((const char *)data, size, t, &bt);
    for (size_t i = 0; i < bt.n; i++)
        total += strlen(bt.v[i]);
    bayes_tokens_free(&bt);
    mime_free(&mm);
    /* HTML alone, with a small output buffer */
    char out[256];
    size_t n = html_to_text((const char *)data, size, out, sizeof(out), NULL, NULL);
    if (n >= sizeof(out) || strlen(out) != n)
        __builtin_trap();
    return total == (size_t)-1;
}
