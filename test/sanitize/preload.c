/*
 * test/sanitize/preload.c: preloaded after gcc's libasan into Debian's
 * postgres by test/sanitize.sh (LD_PRELOAD="libasan.so.8:this").  Two
 * work-arounds, both for a sanitizer runtime loaded into a server that was
 * not built with it:
 *
 * 1. swift_demangle.  With LD_PRELOAD the ASan runtime's constructor runs
 *    after those of postgres's own libraries (preloaded objects are
 *    initialised last), so ASan initialises lazily, on the first malloc --
 *    and the first one is made by libgpg-error's constructor inside
 *    bindtextdomain(), which holds glibc's _nl_state_lock for writing.
 *    During its initialisation ASan looks up swift_demangle with dlsym();
 *    the lookup fails, the "undefined symbol" message is translated through
 *    dcgettext(), which takes and releases the same lock, and
 *    bindtextdomain() then releases it a second time.  The lock is left
 *    corrupted, and the next bindtextdomain() -- postgres's own, in
 *    set_pglocale_pgservice() -- waits on it forever: `postgres -V`, and so
 *    pg_ctl and initdb, hang (with clang's ASan runtime as well).  With the
 *    symbol defined here the lookup succeeds and the lock is left alone.
 *    ASan calls it only for Swift-mangled names (there are none); NULL
 *    means "not demangled".
 *
 * 2. __ubsan_default_options.  The UBSan runtime (libubsan, loaded with the
 *    module) initialises at its first report, in a backend, and reads
 *    UBSAN_OPTIONS from /proc/self/environ -- which PostgreSQL has
 *    overwritten with the process title by then (ps_status.c moves environ
 *    elsewhere first), so the options were lost (no stack traces).  UBSan
 *    asks this hook for its defaults first: it answers from the environ
 *    that PostgreSQL kept.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

char       *swift_demangle(const char *mangled, size_t mangled_len, char *out,
                           size_t *out_len, uint32_t flags);
const char *__ubsan_default_options(void);

char *
swift_demangle(const char *mangled, size_t mangled_len, char *out,
               size_t *out_len, uint32_t flags)
{
    (void) mangled;
    (void) mangled_len;
    (void) out;
    (void) out_len;
    (void) flags;
    return NULL;
}

const char *
__ubsan_default_options(void)
{
    const char *options = getenv("UBSAN_OPTIONS");

    return options ? options : "";
}
