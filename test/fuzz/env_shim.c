/*-------------------------------------------------------------------------
 *
 * env_shim.c
 *	  A small stand-in for the backend, for the harnesses whose code under
 *	  test needs only palloc, ereport and a clock: page_scan, csv_scan,
 *	  rate_headers, url.  libpgcommon and libpgport (frontend builds of
 *	  PostgreSQL's own code) give the rest: UTF-8 helpers, hashing,
 *	  psprintf, snprintf.
 *
 * Memory: every palloc is a malloc of exactly its size, so AddressSanitizer
 * sees each chunk's bounds, a use after pfree and a read past the end;
 * chunks are remembered in a table, so that fuzz_end frees what an input
 * left behind (an ERROR jumps past the code's pfrees, as it may in the
 * backend, where the memory context goes) and only malloc'd memory the
 * code itself leaks is reported as a leak.
 *
 * Errors: errstart .. errfinish for an ERROR longjmps to the innermost
 * PG_TRY, exactly the contract elog.h gives the code; anything worse
 * (FATAL, PANIC) or an ERROR outside fuzz_call aborts, as a finding.
 * Lesser levels are dropped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>
#include <stdarg.h>
#include <sys/time.h>

#include "fmgr.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "fuzz.h"

/* ---------- memory ---------- */

/* the chunks palloc'd for the current input: open addressing, by address */
static void **chunks;
static size_t nchunks;
static size_t chunks_cap;

#define TOMBSTONE ((void *) 1)

static size_t
chunk_slot(const void *p)
{
	return ((uintptr_t) p >> 4) * UINT64CONST(0x9E3779B97F4A7C15) % chunks_cap;
}

static void
chunks_add(void *p)
{
	size_t		i;

	if ((nchunks + 1) * 2 > chunks_cap)
	{
		void	  **old = chunks;
		size_t		old_cap = chunks_cap;

		chunks_cap = Max(chunks_cap * 2, 1024);
		chunks = calloc(chunks_cap, sizeof(void *));
		if (chunks == NULL)
			abort();
		nchunks = 0;
		for (size_t j = 0; j < old_cap; j++)
			if (old[j] != NULL && old[j] != TOMBSTONE)
				chunks_add(old[j]);
		free(old);
	}
	for (i = chunk_slot(p); chunks[i] != NULL && chunks[i] != TOMBSTONE; i = (i + 1) % chunks_cap)
		;
	chunks[i] = p;
	nchunks++;
}

static void
chunks_remove(void *p)
{
	if (chunks_cap == 0)
		fuzz_fail("pfree/repalloc of %p before any palloc", p);
	for (size_t i = chunk_slot(p); chunks[i] != NULL; i = (i + 1) % chunks_cap)
		if (chunks[i] == p)
		{
			chunks[i] = TOMBSTONE;
			nchunks--;
			return;
		}
	/* not ours: a pfree of something palloc never gave, or given twice */
	fuzz_fail("pfree/repalloc of %p, which is no live palloc'd chunk", p);
}

void *
palloc(Size size)
{
	void	   *p;

	if (!AllocSizeIsValid(size))
		elog(ERROR, "invalid memory alloc request size %zu", size);
	p = malloc(size);
	if (p == NULL)
		abort();
	chunks_add(p);
	return p;
}

void *
palloc0(Size size)
{
	void	   *p = palloc(size);

	memset(p, 0, size);
	return p;
}

void *
palloc_extended(Size size, int flags)
{
	return (flags & MCXT_ALLOC_ZERO) ? palloc0(size) : palloc(size);
}

void
pfree(void *pointer)
{
	chunks_remove(pointer);
	free(pointer);
}

void *
repalloc(void *pointer, Size size)
{
	void	   *p;

	if (!AllocSizeIsValid(size))
		elog(ERROR, "invalid memory alloc request size %zu", size);
	chunks_remove(pointer);
	/* always a new block: a pointer kept across repalloc is then caught */
	p = malloc(size);
	if (p == NULL)
		abort();
	memcpy(p, pointer, Min(size, malloc_usable_size(pointer)));
	free(pointer);
	chunks_add(p);
	return p;
}

char *
pstrdup(const char *in)
{
	return pnstrdup(in, strlen(in));
}

char *
pnstrdup(const char *in, Size len)
{
	char	   *out;

	len = strnlen(in, len);
	out = palloc(len + 1);
	memcpy(out, in, len);
	out[len] = '\0';
	return out;
}

void
fuzz_begin(void)
{
}

void
fuzz_end(void)
{
	for (size_t i = 0; i < chunks_cap; i++)
	{
		if (chunks[i] != NULL && chunks[i] != TOMBSTONE)
			free(chunks[i]);
		chunks[i] = NULL;
	}
	nchunks = 0;
}

/* ---------- errors ---------- */

sigjmp_buf *PG_exception_stack = NULL;
ErrorContextCallback *error_context_stack = NULL;

static int	error_level;
static char error_message[1024];

bool
errstart(int elevel, const char *domain)
{
	if (elevel < ERROR)
		return false;			/* nothing to do for notices and warnings */
	error_level = elevel;
	error_message[0] = '\0';
	return true;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (error_level > ERROR || PG_exception_stack == NULL)
		fuzz_fail("%s at %s:%d outside of any PG_TRY: %s",
				  error_level > ERROR ? "FATAL or PANIC" : "ERROR", filename, lineno,
				  error_message);
	siglongjmp(*PG_exception_stack, 1);
}

int
errcode(int sqlerrcode)
{
	return 0;
}

static int
keep_message(const char *fmt, va_list ap)
{
	vsnprintf(error_message, sizeof(error_message), fmt, ap);
	return 0;
}

int
errmsg(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	keep_message(fmt, ap);
	va_end(ap);
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	keep_message(fmt, ap);
	va_end(ap);
	return 0;
}

int
errdetail(const char *fmt,...)
{
	return 0;
}

int
errhint(const char *fmt,...)
{
	return 0;
}

bool
fuzz_call(void (*fn) (void *arg), void *arg)
{
	bool		ok = true;

	PG_TRY();
	{
		fn(arg);
	}
	PG_CATCH();
	{
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

const char *
fuzz_error_message(void)
{
	return error_message;
}

/* ---------- the rest ---------- */

/* the backend's clock: rate_headers.c reads reset times against it */
TimestampTz
GetCurrentTimestamp(void)
{
	struct timeval tp;

	gettimeofday(&tp, NULL);
	return ((TimestampTz) tp.tv_sec -
			((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)) * USECS_PER_SEC +
		tp.tv_usec;
}

/*
 * What only the SQL-callable test functions of those files use
 * (_etl_rate_headers' jsonb result): never reached from a harness.
 */
#define NOT_IN_SHIM(name) fuzz_fail("%s is not in the shim: a harness reached SQL-only code", name)

Datum
DirectFunctionCall1Coll(PGFunction func, Oid collation, Datum arg1)
{
	NOT_IN_SHIM("DirectFunctionCall1Coll");
}

Datum
jsonb_in(PG_FUNCTION_ARGS)
{
	NOT_IN_SHIM("jsonb_in");
}

struct varlena *
pg_detoast_datum_packed(struct varlena *datum)
{
	NOT_IN_SHIM("pg_detoast_datum_packed");
}

char *
text_to_cstring(const text *t)
{
	NOT_IN_SHIM("text_to_cstring");
}
