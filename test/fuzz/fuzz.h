/*-------------------------------------------------------------------------
 *
 * fuzz.h
 *	  What every libFuzzer harness of etl_exec shares: the life of one
 *	  input (a memory context of its own, errors caught), and the reading
 *	  of an input's bytes.
 *
 * Two environments implement the first half, and a harness links one:
 *
 *	  env_shim.c	for parsers that need little of the backend (page_scan,
 *					csv_scan, rate_headers, url): palloc, elog and the few
 *					other symbols they call, written small, with libpgcommon
 *					and libpgport for the rest.  No server binary needed.
 *	  env_server.c	for code that works on jsonb (json_path, page_records,
 *					type_infer, redact, pagination): the real backend,
 *					linked from a copy of the server binary made loadable
 *					(libpostgres.py), set up just far enough to parse and
 *					query JSON with no database.
 *
 * Both turn an ERROR the code under test raises into a false return of
 * fuzz_call: bad input that is refused is a normal outcome.  A crash, a
 * sanitizer report, a leak or a failed invariant (fuzz_fail) is a finding.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ETL_FUZZ_H
#define ETL_FUZZ_H

#include "postgres.h"

#include <stdint.h>

/* ---- one input's life (env_shim.c or env_server.c) ---- */

/* start an input: a fresh memory context, current until fuzz_end */
extern void fuzz_begin(void);

/* end it: everything palloc'd for it is freed */
extern void fuzz_end(void);

/*
 * Run fn(arg) as a PG_TRY block: true when it returned, false when it
 * raised an ERROR (then the error state is cleared, the input's context is
 * current again, and fuzz_error_message() says what the error was).
 */
extern bool fuzz_call(void (*fn) (void *arg), void *arg);
extern const char *fuzz_error_message(void);

/* a broken invariant: print it and abort, which libFuzzer reports */
extern void fuzz_fail(const char *fmt,...) pg_attribute_printf(1, 2) pg_attribute_noreturn();

/* with FUZZ_DEBUG set in the environment, say what an input did (stderr) */
extern void fuzz_debug(const char *fmt,...) pg_attribute_printf(1, 2);

/* ---- reading an input (fuzz_input.c) ---- */

typedef struct FuzzInput
{
	const char *p;
	const char *end;
} FuzzInput;

extern void fuzz_input_init(FuzzInput *in, const uint8_t *data, size_t size);

/*
 * The next line (without its '\n') as a palloc'd NUL-terminated string;
 * a NUL byte in it ends it early, as a C string API would see it.  At the
 * input's end: an empty string.
 */
extern char *fuzz_take_line(FuzzInput *in);

/*
 * The rest of the input as an exact-size malloc'd copy (no NUL after it,
 * so that an over-read is caught), and its length.  free() it.
 */
extern char *fuzz_take_rest(FuzzInput *in, size_t *len);

/* the value of "name=value" among the space-separated words of line, or NULL */
extern char *fuzz_option(const char *line, const char *name);

/* whether word is one of the space-separated words of line */
extern bool fuzz_flag(const char *line, const char *word);

#endif							/* ETL_FUZZ_H */
