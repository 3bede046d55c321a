/* libFuzzer target: the web role's request parsing: route patterns and
 * the route table against a hostile path (under LeakSanitizer: a miss
 * must allocate nothing), the session cookie out of a hostile Cookie
 * header. Input: "PATH\nCOOKIES". */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../webui/web_private.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    char *nl = strchr(s, '\n');
    const char *cookies = "";
    if (nl) {
        *nl = '\0';
        cookies = nl + 1;
    }
    static const char *const patterns[] = { "/api/v1/quarantine/*/release", "/api/v1/quarantine/*",
                                            "/api/v1/tokens/*", "/api/v1/domains/*/dns",
                                            "/api/v1/me", "/metrics", "/*/*/*/*/*" };
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
        char *args[4];
        size_t n = 0;
        if (web_route_match(patterns[i], s, args, &n)) {
            for (size_t k = 0; k < n; k++) {
                if (args[k][0] == '\0' || strchr(args[k], '/'))
                    __builtin_trap();       /* a segment is never empty, never two */
                free(args[k]);
            }
        } else if (n != 0) {
            __builtin_trap();               /* a miss allocates nothing */
        }
    }
    /* the route table itself, as dispatch uses it, with every method */
    for (int m = WM_GET; m <= WM_OTHER; m++) {
        char *args[4];
        size_t n = 0;
        int status = 0;
        const struct web_route *r = web_route_find(web_routes, web_nroutes, (enum web_method)m, s,
                                                   args, &n, &status);
        if (r == NULL && (n != 0 || (status != 404 && status != 405)))
            __builtin_trap();
        web_route_args_free(args, n);
    }
    char out[128];
    web_cookie_value(cookies, "moat_session", out, sizeof(out));
    if (strlen(out) >= sizeof(out))
        __builtin_trap();
    free(s);
    return 0;
}
