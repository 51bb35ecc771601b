/*-------------------------------------------------------------------------
 *
 * page_table.c
 *	  The run's page table: the way into a target that COPY must not write
 *	  directly.
 *
 * The loader (loader.c) sends three kinds of page this way:
 *
 *	- an upsert's pages, each merged at once by one statement, as the run's
 *	  role:
 *
 *		INSERT INTO target (cols) SELECT DISTINCT ON (keys) cols
 *		FROM unnest($1) WITH ORDINALITY AS u (...)
 *		ORDER BY keys, ordinality DESC
 *		ON CONFLICT (keys) DO UPDATE SET col = EXCLUDED.col, ...
 *
 *	  where $1 is the page: an array of rows of the page table's type, read
 *	  from the page's COPY text by COPY's own parser (loader.c).  The last
 *	  record of a key wins; columns the page does not mention keep their
 *	  value on update and take their default on insert; the executor checks
 *	  the role's privileges and row-level security as for any upsert;
 *
 *	- pages for a table with row-level security, each moved at once the
 *	  same way, by INSERT ... SELECT ... FROM unnest($1) (COPY would bypass
 *	  the policies; the INSERT applies them);
 *
 *	- pages for a table another extension takes over (Citus, TimescaleDB:
 *	  target_kind.c), COPYed into the page table itself and moved from it
 *	  in few large statements -- every ETL_PAGE_TABLE_ROWS rows or
 *	  ETL_PAGE_TABLE_BYTES of COPY text, and before every commit -- which
 *	  that extension plans.
 *
 * A page travels as an array rather than through the table's rows so that
 * nothing has to empty the table after each page: TRUNCATE gives a table
 * a new file each time (a file made and removed per page), and DELETE
 * leaves rows that every later page of the transaction would scan.  The
 * statements are prepared once per set of columns.
 *
 * The table is a temporary table of the worker's session: no other session
 * can see it, plant one in its place or take it over, and it goes with the
 * worker.  The worker makes it (a restricted operation may not create
 * temporary tables) with the loader's columns -- the target's types,
 * typmods and collations, no constraints, no defaults -- and gives it to
 * the run's role, which COPYs into it, INSERTs from it and empties it.
 * Nothing runs in it as a more privileged role: the worker itself only
 * creates and drops it.
 *
 * Its rows are transactional (a page rolled back takes its rows, and any
 * move it made, with it); the counters here are not, so a move counts the
 * rows it takes, and rows are taken to be pending until a flush at the
 * top level has moved them, or a page that began with none moved its own.
 * A page table made in a page's subtransaction that rolled back is gone:
 * it is made again when next needed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "etl_exec.h"

/*
 * Rows the page table gathers for a target another extension takes over
 * before they move (each INSERT ... SELECT into a Citus table costs a COPY
 * to every shard it touches, and once the first has run, every page's
 * savepoint goes to the nodes too: few large statements, not one a page).
 * The bytes bound the temporary table's size on disk when rows are wide.
 */
#define ETL_PAGE_TABLE_ROWS 100000
#define ETL_PAGE_TABLE_BYTES (64 * 1024 * 1024)

/* the prepared statements kept: one per set of columns pages mention */
#define ETL_PAGE_PLANS 16

/* a prepared statement that writes a page's rows ($1) into the target */
typedef struct PagePlan
{
	bool	   *cols;			/* the columns it writes */
	SPIPlanPtr	plan;
} PagePlan;

struct EtlPageTable
{
	MemoryContext cxt;
	char	   *name;			/* unqualified: in pg_temp */
	char	   *qualified;		/* quoted, with the temporary schema */
	Oid			relid;			/* InvalidOid: not made (or rolled back) */
	Oid			rowtype;		/* its row type, that of the pages' arrays */
	Oid			role_oid;
	const char *target;			/* quoted, qualified */
	EtlTargetKind kind;
	bool		upsert;
	int			ncols;
	EtlPageTableColumn *cols;
	char	   *ordinality;		/* a name for unnest's ordinality column */
	List	   *plans;			/* of PagePlan *, for rowtype */
	/* the rows gathered in the table since the last move */
	bool	   *batch_cols;		/* the columns they carry (NULL: none yet) */
	bool		pending;		/* some may be there */
	bool		pending_before; /* ... when the page being copied began */
	int64		batch_rows;		/* copied since the last move (a guide) */
	int64		batch_bytes;	/* and their COPY text */
	int32		batch_first;	/* the pages among them */
	int32		batch_last;
};

/* a name for unnest's ordinality column that is none of the columns' */
static char *
ordinality_name(int ncols, const EtlPageTableColumn *cols)
{
	char	   *name = pstrdup("etl_exec_ordinality");

	for (int suffix = 1;; suffix++)
	{
		bool		taken = false;

		for (int c = 0; c < ncols && !taken; c++)
			taken = strcmp(cols[c].name, name) == 0;
		if (!taken)
			return name;
		name = psprintf("etl_exec_ordinality_%d", suffix);
	}
}

/*
 * The page table of a run (made when first opened) for these columns of
 * the target; upsert: pages merge on the key columns.
 */
EtlPageTable *
etl_page_table_new(MemoryContext cxt, int64 run_id, Oid role_oid, const char *target,
				   EtlTargetKind kind, int ncols, const EtlPageTableColumn *cols, bool upsert)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	EtlPageTable *pt = palloc0(sizeof(EtlPageTable));

	pt->cxt = cxt;
	pt->name = psprintf("etl_exec_page_" INT64_FORMAT, run_id);
	pt->role_oid = role_oid;
	pt->target = pstrdup(target);
	pt->kind = kind;
	pt->upsert = upsert;
	pt->ncols = ncols;
	pt->cols = palloc(sizeof(EtlPageTableColumn) * Max(ncols, 1));
	for (int c = 0; c < ncols; c++)
	{
		pt->cols[c] = cols[c];
		pt->cols[c].name = pstrdup(cols[c].name);
	}
	pt->ordinality = ordinality_name(ncols, cols);
	pt->batch_first = -1;
	MemoryContextSwitchTo(old);
	return pt;
}

/* Forget the table and what it held: it is gone (or about to be). */
static void
forget_table(EtlPageTable *pt)
{
	ListCell   *lc;

	foreach(lc, pt->plans)
		SPI_freeplan(((PagePlan *) lfirst(lc))->plan);
	list_free_deep(pt->plans);
	pt->plans = NIL;
	pt->relid = InvalidOid;
	pt->rowtype = InvalidOid;
	pt->batch_cols = NULL;
	pt->pending = false;
	pt->batch_rows = 0;
	pt->batch_bytes = 0;
	pt->batch_first = -1;
}

/*
 * Whether the table made earlier is still there: the subtransaction or
 * transaction that made it may have rolled back.
 */
static bool
table_is_there(EtlPageTable *pt)
{
	char	   *name;
	bool		there;

	if (!OidIsValid(pt->relid))
		return false;
	name = get_rel_name(pt->relid);
	there = name != NULL && strcmp(name, pt->name) == 0 &&
		isTempNamespace(get_rel_namespace(pt->relid));
	if (!there)
		forget_table(pt);
	return there;
}

/* a column's collation, when it is not its type's own */
static void
append_collation(StringInfo sql, const EtlPageTableColumn *col)
{
	HeapTuple	tup;
	Form_pg_collation coll;

	if (!OidIsValid(col->collation) || col->collation == get_typcollation(col->typid))
		return;
	tup = SearchSysCache1(COLLOID, ObjectIdGetDatum(col->collation));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for collation %u", col->collation);
	coll = (Form_pg_collation) GETSTRUCT(tup);
	appendStringInfo(sql, " COLLATE %s",
					 quote_qualified_identifier(get_namespace_name(coll->collnamespace),
												NameStr(coll->collname)));
	ReleaseSysCache(tup);
}

/*
 * Make the table (as the worker: a restricted operation may not create
 * temporary tables) and give it to the run's role.
 */
static void
create_table(EtlPageTable *pt)
{
	char	   *role = GetUserNameFromId(pt->role_oid, false);
	const char *name = quote_identifier(pt->name);
	StringInfoData sql;
	MemoryContext old;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TEMPORARY TABLE %s (", name);
	for (int c = 0; c < pt->ncols; c++)
	{
		appendStringInfo(&sql, "%s%s %s", c ? ", " : "", quote_identifier(pt->cols[c].name),
						 format_type_extended(pt->cols[c].typid, pt->cols[c].typmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
		append_collation(&sql, &pt->cols[c]);
	}
	appendStringInfoChar(&sql, ')');

	SPI_connect();

	/*
	 * A worker runs one queued run after another in the same session: an
	 * earlier segment of this run may have left its page table here.
	 */
	if (SPI_execute(psprintf("DROP TABLE IF EXISTS pg_temp.%s", name), false, 0) != SPI_OK_UTILITY ||
		SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY ||
		SPI_execute(psprintf("ALTER TABLE pg_temp.%s OWNER TO %s", name, quote_identifier(role)),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not create page table %s", pt->name);
	SPI_finish();

	old = MemoryContextSwitchTo(pt->cxt);
	forget_table(pt);
	pt->relid = RangeVarGetRelid(makeRangeVar("pg_temp", pt->name, -1), NoLock, false);
	pt->rowtype = get_rel_type_id(pt->relid);
	if (pt->qualified)
		pfree(pt->qualified);
	pt->qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(pt->relid)),
											   pt->name);
	MemoryContextSwitchTo(old);
}

/*
 * The page table, made if it is not there (yet, or any more): its relid.
 * Called as the worker, not in a restricted operation.
 */
Oid
etl_page_table_open(EtlPageTable *pt)
{
	if (!table_is_there(pt))
		create_table(pt);
	return pt->relid;
}

/* ---------- writing into the target ---------- */

/* the pages being written, for the error context (first < 0: not known) */
typedef struct PageSpan
{
	int32		first;
	int32		last;
} PageSpan;

static void
pages_error_context(void *arg)
{
	PageSpan   *span = (PageSpan *) arg;

	if (span->first < 0)
		return;
	if (span->first == span->last)
		errcontext("loading page %d", span->first + 1);
	else
		errcontext("loading pages %d to %d", span->first + 1, span->last + 1);
}

/*
 * The INSERT that writes rows carrying the columns cols from source (the
 * page table, or unnest($1): a page's rows): for upsert, the last row of
 * each key merges into the target.  Columns outside cols are left out:
 * their defaults apply to new rows, and rows updated keep them.
 */
static char *
insert_sql(EtlPageTable *pt, const bool *cols, bool from_array)
{
	StringInfoData names;
	StringInfoData keys;
	StringInfoData updates;
	StringInfoData source;
	StringInfoData sql;

	initStringInfo(&names);
	initStringInfo(&keys);
	initStringInfo(&updates);
	initStringInfo(&source);
	initStringInfo(&sql);
	for (int c = 0; c < pt->ncols; c++)
	{
		const char *col = quote_identifier(pt->cols[c].name);

		if (!cols[c])
			continue;
		appendStringInfo(&names, "%s%s", names.len ? ", " : "", col);
		if (pt->cols[c].is_key)
			appendStringInfo(&keys, "%s%s", keys.len ? ", " : "", col);
		else
			appendStringInfo(&updates, "%s%s = EXCLUDED.%s", updates.len ? ", " : "", col, col);
	}
	if (!from_array)
		appendStringInfoString(&source, pt->qualified);
	else
	{
		/* the array's rows, every column named as in the table */
		appendStringInfoString(&source, "unnest($1) WITH ORDINALITY AS u (");
		for (int c = 0; c < pt->ncols; c++)
			appendStringInfo(&source, "%s, ", quote_identifier(pt->cols[c].name));
		appendStringInfo(&source, "%s)", quote_identifier(pt->ordinality));
	}

	if (!pt->upsert)
		appendStringInfo(&sql, "INSERT INTO %s (%s) SELECT %s FROM %s",
						 pt->target, names.data, names.data, source.data);
	else
		appendStringInfo(&sql,
						 "INSERT INTO %s (%s) SELECT DISTINCT ON (%s) %s FROM %s "
						 "ORDER BY %s, %s DESC "
						 "ON CONFLICT (%s) DO %s%s",
						 pt->target, names.data, keys.data, names.data, source.data,
						 keys.data, quote_identifier(pt->ordinality),
						 keys.data, updates.len ? "UPDATE SET " : "NOTHING", updates.data);
	return sql.data;
}

/* The prepared INSERT of a page's rows with these columns. */
static SPIPlanPtr
plan_for(EtlPageTable *pt, const bool *cols)
{
	Oid			argtype = get_array_type(pt->rowtype);
	MemoryContext old;
	ListCell   *lc;
	PagePlan   *pp;
	char	   *sql;

	foreach(lc, pt->plans)
	{
		pp = (PagePlan *) lfirst(lc);
		if (memcmp(pp->cols, cols, sizeof(bool) * pt->ncols) == 0)
			return pp->plan;
	}
	sql = insert_sql(pt, cols, true);
	old = MemoryContextSwitchTo(pt->cxt);
	pp = palloc(sizeof(PagePlan));
	pp->cols = palloc(sizeof(bool) * Max(pt->ncols, 1));
	memcpy(pp->cols, cols, sizeof(bool) * pt->ncols);
	pp->plan = SPI_prepare(sql, 1, &argtype);
	if (pp->plan == NULL)
		elog(ERROR, "etl_exec: could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(pp->plan);
	MemoryContextSwitchTo(pt->cxt);
	if (list_length(pt->plans) >= ETL_PAGE_PLANS)
	{
		PagePlan   *oldest = (PagePlan *) linitial(pt->plans);

		SPI_freeplan(oldest->plan);
		pt->plans = list_delete_first(pt->plans);
	}
	pt->plans = lappend(pt->plans, pp);
	MemoryContextSwitchTo(old);
	return pp->plan;
}

/*
 * Write a page's rows -- nrows rows of the page table's type, in one
 * array, carrying the columns present -- into the target: merged for
 * upsert, else inserted, and then every one of them must have gone in (a
 * row that a SELECT on the target would not see must not count as
 * loaded).  As the run's role, whose privileges the executor checks.
 */
void
etl_page_table_write_rows(EtlPageTable *pt, Datum rows, int nrows, const bool *present,
						  int32 page_index)
{
	PageSpan	span = {page_index, page_index};
	ErrorContextCallback errcb;
	SPIPlanPtr	plan;

	if (nrows == 0)
		return;
	errcb.callback = pages_error_context;
	errcb.arg = &span;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	SPI_connect();
	plan = plan_for(pt, present);
	if (SPI_execute_plan(plan, &rows, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "etl_exec: INSERT into %s failed", pt->target);
	if (!pt->upsert && SPI_processed != (uint64) nrows)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("%s %s took " UINT64_FORMAT " of %d rows",
						etl_target_kind_name(pt->kind), pt->target,
						(uint64) SPI_processed, nrows)));
	SPI_finish();
	error_context_stack = errcb.previous;
}

/*
 * Move the rows in the page table (they carry the columns cols) into the
 * target, and empty it; as the run's role.  Every row must go in, as
 * above.  in_page: in a page's subtransaction (else at the top level,
 * before a commit).
 */
static void
move_rows(EtlPageTable *pt, const bool *cols, bool in_page)
{
	PageSpan	span = {pt->batch_first, pt->batch_last};
	ErrorContextCallback errcb;
	int64		rows;
	bool		isnull;

	errcb.callback = pages_error_context;
	errcb.arg = &span;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	SPI_connect();
	/* not read-only: a read-only query would not see what COPY just wrote */
	if (SPI_execute(psprintf("SELECT count(*) FROM %s", pt->qualified), false, 0) != SPI_OK_SELECT)
		elog(ERROR, "etl_exec: could not count the rows of %s", pt->qualified);
	rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (rows > 0)
	{
		if (SPI_execute(insert_sql(pt, cols, false), false, 0) != SPI_OK_INSERT)
			elog(ERROR, "etl_exec: INSERT into %s failed", pt->target);
		if (SPI_processed != (uint64) rows)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("%s %s took " UINT64_FORMAT " of " UINT64_FORMAT " rows",
							etl_target_kind_name(pt->kind), pt->target,
							(uint64) SPI_processed, (uint64) rows)));
		if (SPI_execute(psprintf("TRUNCATE %s", pt->qualified), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "etl_exec: could not empty page table %s", pt->qualified);
	}
	SPI_finish();
	error_context_stack = errcb.previous;
	/* a page's subtransaction that rolls back brings back what it moved */
	pt->pending = in_page ? pt->pending_before : false;
	pt->batch_rows = 0;
	pt->batch_bytes = 0;
	pt->batch_first = -1;
}

/*
 * Before COPY puts a page that mentions the columns present into the
 * page table: rows gathered with other columns move first (the rows the
 * table holds all carry the same columns, so that a column a page leaves
 * out keeps the target's default).  As the run's role.
 */
void
etl_page_table_before_copy(EtlPageTable *pt, const bool *present)
{
	if (pt->batch_cols == NULL)
		pt->batch_cols = MemoryContextAllocZero(pt->cxt, sizeof(bool) * Max(pt->ncols, 1));
	pt->pending_before = pt->pending;
	if (pt->pending && memcmp(present, pt->batch_cols, sizeof(bool) * pt->ncols) != 0)
		move_rows(pt, pt->batch_cols, true);
	memcpy(pt->batch_cols, present, sizeof(bool) * pt->ncols);
}

/*
 * COPY put a page into the page table (rows, and bytes of COPY text):
 * move what the table holds when it is enough.  As the run's role.
 */
void
etl_page_table_after_copy(EtlPageTable *pt, uint64 rows, int64 bytes, int32 page_index)
{
	pt->pending = true;
	pt->batch_rows += rows;
	pt->batch_bytes += bytes;
	if (pt->batch_first < 0)
		pt->batch_first = page_index;
	pt->batch_last = page_index;
	if (pt->batch_rows >= ETL_PAGE_TABLE_ROWS || pt->batch_bytes >= ETL_PAGE_TABLE_BYTES)
		move_rows(pt, pt->batch_cols, true);
}

/* Whether rows may wait in the page table (a flush has work to do). */
bool
etl_page_table_pending(EtlPageTable *pt)
{
	return pt != NULL && pt->pending && table_is_there(pt);
}

/*
 * Before a commit, at the top level: the rows still in the page table go
 * into the target, in the transaction that commits the checkpoint
 * covering them.  As the run's role.
 */
void
etl_page_table_flush(EtlPageTable *pt)
{
	if (etl_page_table_pending(pt))
		move_rows(pt, pt->batch_cols, false);
}

/*
 * The run is over: drop the page table (if there is one), so that a
 * worker going on to other queued runs does not gather temporary tables.
 * Dropping fires nothing of the table's.
 */
void
etl_page_table_drop(EtlPageTable *pt)
{
	if (pt == NULL || !table_is_there(pt))
		return;
	SPI_connect();
	if (SPI_execute(psprintf("DROP TABLE IF EXISTS %s", pt->qualified), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not drop page table %s", pt->qualified);
	SPI_finish();
	forget_table(pt);
}
