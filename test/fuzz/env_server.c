/*-------------------------------------------------------------------------
 *
 * env_server.c
 *	  The real backend as a library, for the harnesses whose code under
 *	  test works on jsonb: json_path, page_records, type_infer, redact,
 *	  pagination.
 *
 * Those files use much of PostgreSQL -- jsonb_in, the jsonb iterators and
 * builders, PostgreSQL's jsonpath engine, numeric, the type input
 * functions, Lists, memory contexts and elog -- so they are linked against
 * the server itself: build/libpostgres.so, a copy of the postgres binary
 * that the dynamic linker agrees to load (libpostgres.py says how).  This
 * file sets up just what a backend sets up before it parses JSON: the
 * memory context tree, the stack depth check, a UTF-8 database encoding
 * (the JSON lexer decodes \u escapes into it), the settings at their
 * defaults and a time zone with its abbreviations (for timestamptz input
 * and jsonpath's datetime methods).  No database, no catalog: code that
 * would read one is not reached.
 *
 * Memory: on PostgreSQL 15 each input's memory context, and every context
 * the code under test makes with AllocSetContextCreate, is a "malloc
 * context" of this file's: each chunk its own malloc, so that
 * AddressSanitizer sees its bounds (an AllocSet carves small chunks out
 * of 8 kB blocks, where an overrun lands in the next chunk unseen).
 * PostgreSQL 16 replaced the context pointer before each chunk with a
 * header naming one of a fixed set of context types, so from 16 on the
 * contexts are plain AllocSets: errors in palloc'd memory are then caught
 * only at block edges.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/memnodes.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "fuzz.h"

static MemoryContext input_cxt = NULL;
static char error_message[1024];

#if PG_VERSION_NUM < 160000

/* ---------- the malloc context (PostgreSQL 15) ---------- */

/*
 * A chunk: list links, its size, and (last, as GetMemoryChunkContext
 * requires) the context it belongs to; the caller's bytes follow, to the
 * end of the malloc'd block.
 */
typedef struct MallocChunk
{
	struct MallocChunk *prev;
	struct MallocChunk *next;
	Size		size;
	MemoryContext context;
} MallocChunk;

typedef struct MallocContext
{
	MemoryContextData header;
	MallocChunk ring;			/* the chunks, a circular list */
} MallocContext;

#define CHUNK_OF(pointer) ((MallocChunk *) (pointer) - 1)

static void *
malloc_alloc(MemoryContext context, Size size)
{
	MallocContext *mc = (MallocContext *) context;
	MallocChunk *chunk = malloc(sizeof(MallocChunk) + size);

	if (chunk == NULL)
		return NULL;			/* palloc raises "out of memory" */
	chunk->size = size;
	chunk->context = context;
	chunk->next = mc->ring.next;
	chunk->prev = &mc->ring;
	mc->ring.next->prev = chunk;
	mc->ring.next = chunk;
	context->mem_allocated += size;
	return chunk + 1;
}

static void
malloc_free(MemoryContext context, void *pointer)
{
	MallocChunk *chunk = CHUNK_OF(pointer);

	chunk->prev->next = chunk->next;
	chunk->next->prev = chunk->prev;
	context->mem_allocated -= chunk->size;
	free(chunk);
}

/* always a new block: a pointer kept across repalloc is then caught */
static void *
malloc_realloc(MemoryContext context, void *pointer, Size size)
{
	void	   *grown = malloc_alloc(context, size);

	if (grown == NULL)
		return NULL;
	memcpy(grown, pointer, Min(size, CHUNK_OF(pointer)->size));
	malloc_free(context, pointer);
	return grown;
}

static void
malloc_reset(MemoryContext context)
{
	MallocContext *mc = (MallocContext *) context;

	while (mc->ring.next != &mc->ring)
		malloc_free(context, mc->ring.next + 1);
}

static void
malloc_delete(MemoryContext context)
{
	malloc_reset(context);
	free(context);
}

static Size
malloc_chunk_space(MemoryContext context, void *pointer)
{
	return sizeof(MallocChunk) + CHUNK_OF(pointer)->size;
}

static bool
malloc_is_empty(MemoryContext context)
{
	MallocContext *mc = (MallocContext *) context;

	return mc->ring.next == &mc->ring;
}

static void
malloc_stats(MemoryContext context, MemoryStatsPrintFunc printfunc, void *passthru,
			 MemoryContextCounters *totals, bool print_to_stderr)
{
	if (totals)
		totals->totalspace += context->mem_allocated;
	if (printfunc)
		printfunc(context, passthru, "malloc context", print_to_stderr);
}

static const MemoryContextMethods malloc_methods = {
	.alloc = malloc_alloc,
	.free_p = malloc_free,
	.realloc = malloc_realloc,
	.reset = malloc_reset,
	.delete_context = malloc_delete,
	.get_chunk_space = malloc_chunk_space,
	.is_empty = malloc_is_empty,
	.stats = malloc_stats,
};

static MemoryContext
malloc_context_create(MemoryContext parent, const char *name)
{
	MallocContext *mc = malloc(sizeof(MallocContext));

	if (mc == NULL)
		abort();
	mc->ring.next = mc->ring.prev = &mc->ring;
	/* (the tag only names the type in statistics: none reads it here) */
	MemoryContextCreate(&mc->header, T_AllocSetContext, &malloc_methods, parent, name);
	return &mc->header;
}

/*
 * The code under test makes its contexts (type_infer.c's, redact.c's)
 * through AllocSetContextCreate: this definition, linked into the harness,
 * comes before the server's for the harness's own calls, so those are
 * malloc contexts too.  The server's calls to it are bound inside it.
 */
MemoryContext
AllocSetContextCreateInternal(MemoryContext parent, const char *name,
							  Size minContextSize, Size initBlockSize, Size maxBlockSize)
{
	return malloc_context_create(parent, name);
}

#define INPUT_CONTEXT_CREATE() malloc_context_create(TopMemoryContext, "fuzz input")

#else							/* PG_VERSION_NUM >= 160000 */

#define INPUT_CONTEXT_CREATE() AllocSetContextCreate(TopMemoryContext, "fuzz input", \
													 ALLOCSET_DEFAULT_SIZES)

#endif

/* ---------- the backend, as far as the harnesses need it ---------- */

static void
server_init(void)
{
	static bool done = false;

	if (done)
		return;
	done = true;
	MemoryContextInit();
	/* check_stack_depth() measures from here: deep JSON is an ERROR, not a crash */
	(void) set_stack_base();
	SetDatabaseEncoding(PG_UTF8);

	/*
	 * The settings at their defaults, as a backend starts with them, and a
	 * time zone with its abbreviations ("Z", "PST": timestamptz_in looks
	 * them up), read from the server's share directory, which the server
	 * finds next to its binary.
	 */
	strlcpy(my_exec_path, FUZZ_PG_BINDIR "/postgres", MAXPGPATH);
	InitializeGUCOptions();
	SetConfigOption("timezone_abbreviations", "Default", PGC_POSTMASTER, PGC_S_DYNAMIC_DEFAULT);
	SetConfigOption("TimeZone", "UTC", PGC_POSTMASTER, PGC_S_DYNAMIC_DEFAULT);
}

void
fuzz_begin(void)
{
	server_init();
	input_cxt = INPUT_CONTEXT_CREATE();
	MemoryContextSwitchTo(input_cxt);
}

void
fuzz_end(void)
{
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextDelete(input_cxt);
	input_cxt = NULL;
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
		ErrorData  *edata;

		MemoryContextSwitchTo(input_cxt);
		edata = CopyErrorData();
		strlcpy(error_message, edata->message ? edata->message : "", sizeof(error_message));
		FlushErrorState();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(input_cxt);
	return ok;
}

const char *
fuzz_error_message(void)
{
	return error_message;
}
