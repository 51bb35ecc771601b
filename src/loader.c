/*-------------------------------------------------------------------------
 *
 * loader.c
 *	  Loads one page of JSON records into the job's target table.
 *
 * Append and replace modes feed PostgreSQL's COPY machinery (BeginCopyFrom
 * with a data-source callback) with the page rendered as COPY text: rows
 * go in with multi-inserts, and triggers, defaults, constraints and
 * partitions work as for any COPY.  COPY itself checks no privileges, so
 * the INSERT privilege of the run's role is checked first, as COPY's own
 * caller would.  A table with row-level security loads through INSERT
 * (checked per page: COPY would bypass the policies).
 *
 * Upsert mode (and dry runs) convert each value in C with the column
 * type's input function, and send a page as one array per column in one
 *
 *	   INSERT INTO target (cols) SELECT ... FROM unnest($1, $2, ...)
 *	   ... ON CONFLICT (keys) DO UPDATE
 *
 * where a key repeated within a page keeps its last record (DISTINCT ON
 * over the array position).  Either way a value that does not fit fails
 * with the page, record, column and value in the error context, and the
 * load runs as the run's role: its privileges, and its alone, decide what
 * the run may write.
 *
 * A table another extension takes over (a Citus distributed, reference or
 * local table, a TimescaleDB hypertable: target_kind.c) must not be fed to
 * COPY directly -- COPY would write the coordinator's empty shell.  An
 * append run COPYs each page into a temporary page table of its own
 * instead, and moves it with one INSERT ... SELECT, which the extension
 * plans (Citus sends the rows to the shards, and commits them with the
 * page's checkpoint by two-phase commit).  Upsert and row-level security
 * go through INSERT anyway; a replace run loads a local staging table and
 * swaps it in with INSERT ... SELECT.  A table no SQL path can load (Citus
 * append distribution) is refused when the run starts.
 *
 * Without a column_map a target column takes the record key of the same
 * name, compared case-insensitively (key_resolver.c); columns that no
 * record of a page mentions are left out of that page's INSERT, so their
 * defaults apply.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/bitmapset.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "parser/parse_relation.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/rls.h"
#include "utils/syscache.h"

#include "compat.h"
#include "etl_exec.h"

typedef struct LoaderColumn
{
	char	   *name;
	Oid			typid;
	int32		typmod;
	bool		is_jsonb;
	bool		is_json;
	bool		is_array;		/* a PostgreSQL array column */
	Oid			array_typid;	/* InvalidOid: sent as text[] and cast */
	int16		typlen;
	bool		typbyval;
	char		typalign;
	FmgrInfo	infunc;
	Oid			ioparam;
	EtlPath    *map_path;		/* from column_map, or NULL */
	bool		mapped;			/* named in column_map */
	bool		is_key;
} LoaderColumn;

typedef struct LoaderPlan
{
	Bitmapset  *columns;
	SPIPlanPtr	plan;
	Oid		   *argtypes;
} LoaderPlan;

struct EtlLoader
{
	MemoryContext cxt;
	const EtlJob *job;
	Oid			role_oid;
	char	   *target;			/* quoted, schema-qualified */
	int			ncols;
	LoaderColumn *cols;
	bool		use_map;
	bool		upsert;
	Oid			insert_relid;	/* where pages load: target or staging */
	bool		use_copy;		/* load through COPY (not upsert, no RLS) */
	EtlScanSpec *scan;			/* for page_scan.c, or NULL: jsonb only */
	int			scan_misses;	/* pages in a row the fast reader gave up on */
	char	   *final_target;	/* replace mode: the target swapped into */
	char	   *staging;		/* replace mode: where pages load, or NULL */
	EtlKeyResolver *keys;		/* record key -> column, for the jsonb path */
	List	   *plans;			/* of LoaderPlan * */
	EtlTargetInfo kind;			/* the job's target, as target_kind.c sees it */
	char	   *page_table;		/* COPY goes here, then INSERT ... SELECT; or NULL */
	Oid			page_relid;
	bool	   *batch_cols;		/* the columns the page table's rows carry */
	int64		batch_rows;		/* rows copied since the last move (a guide) */
	int64		batch_bytes;	/* and their COPY text */
	int32		batch_first;	/* first page among them */
	int32		batch_last;
};

/*
 * Rows the page table gathers before they move (each INSERT ... SELECT
 * into a Citus table costs a COPY to every shard it touches, and once the
 * first has run, every page's savepoint goes to the nodes too: few large
 * statements, not one a page); they also move before every commit.  The
 * bytes bound the temporary table's size on disk when rows are wide.
 */
#define ETL_PAGE_TABLE_ROWS 100000
#define ETL_PAGE_TABLE_BYTES (64 * 1024 * 1024)

/* where a conversion is, for the error context */
typedef struct ConvertPosition
{
	int32		page_index;
	int			record;
	const char *column;
	const char *value;
} ConvertPosition;

static void
convert_error_context(void *arg)
{
	ConvertPosition *pos = (ConvertPosition *) arg;

	if (pos->column == NULL)
		return;
	errcontext("page %d, record %d, column \"%s\", value \"%.200s\"",
			   pos->page_index + 1, pos->record + 1, pos->column,
			   pos->value ? pos->value : "null");
}

/*
 * Everything a load does that can run user code -- type input functions
 * (domain checks), triggers, defaults, the writes -- runs as the run's role,
 * in a restricted operation, with its GUC changes undone afterwards: the
 * worker's own bookkeeping runs as a superuser and must not inherit, say, a
 * search_path a trigger set.  (On error the subtransaction abort undoes the
 * switch.)
 */
typedef struct RoleSwitch
{
	Oid			userid;
	int			sec_context;
	int			nestlevel;
} RoleSwitch;

static void
act_as_run_role(EtlLoader *loader, RoleSwitch *sw)
{
	GetUserIdAndSecContext(&sw->userid, &sw->sec_context);
	SetUserIdAndSecContext(loader->role_oid,
						   sw->sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	sw->nestlevel = NewGUCNestLevel();
}

static void
back_from_run_role(RoleSwitch *sw)
{
	AtEOXact_GUC(false, sw->nestlevel);
	SetUserIdAndSecContext(sw->userid, sw->sec_context);
}

/*
 * Deferred constraints (REFERENCES ... DEFERRABLE INITIALLY DEFERRED, on
 * the target or on any table its triggers and cascades write) are checked
 * within the page: a load is a restricted operation, where PostgreSQL will
 * not queue a trigger past the statement, and a page must fail or commit
 * whole in any case.  Called as the run's role before each statement that
 * writes; nothing is pending then, so it fires nothing itself.
 */
static void
check_constraints_in_page(void)
{
	SPI_connect();
	if (SPI_execute("SET CONSTRAINTS ALL IMMEDIATE", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not make constraints immediate");
	SPI_finish();
}

/*
 * Replace mode: pages load into a staging table that lives as long as the
 * run; the run's last page swaps it into the target in one transaction.
 *
 * The run makes the table itself, fresh, in the extension's schema
 * etl_exec_staging, where no one else may create anything, with a name no
 * one can guess (plain CREATE TABLE: a name that is taken is an error,
 * never a table to adopt); records it in run_context in the same
 * transaction; and gives it to the run's role, so the loads and the swap
 * need nothing the role does not already have on the target.  A resume takes the table its run
 * recorded, after checking that it is still that role's.
 */
#define ETL_STAGING_SCHEMA "etl_exec_staging"

static void
create_staging(EtlLoader *loader, int64 run_id)
{
	uint8		random[8];
	char		suffix[sizeof(random) * 2 + 1];
	char	   *role = GetUserNameFromId(loader->role_oid, false);

	if (!pg_strong_random(random, sizeof(random)))
		elog(ERROR, "etl_exec: could not generate a random staging table name");
	for (int i = 0; i < (int) sizeof(random); i++)
		snprintf(suffix + 2 * i, 3, "%02x", random[i]);
	loader->staging = quote_qualified_identifier(ETL_STAGING_SCHEMA,
												 psprintf("_etl_stage_" INT64_FORMAT "_%s", run_id, suffix));
	SPI_connect();
	if (SPI_execute(psprintf("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS "
							 "INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY)",
							 loader->staging, loader->final_target), false, 0) != SPI_OK_UTILITY ||
		SPI_execute(psprintf("ALTER TABLE %s OWNER TO %s", loader->staging, quote_identifier(role)),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not create staging table %s", loader->staging);
	SPI_finish();
	etl_record_staging(run_id, loader->staging);
}

/* The staging table a resumed run recorded: it must still be its role's. */
static void
adopt_staging(EtlLoader *loader, const char *staging, int64 run_id)
{
	Oid			relid = RangeVarGetRelid(makeRangeVarFromNameList(etl_qualified_name_list(staging)),
										 NoLock, true);
	HeapTuple	tup;
	bool		ok = false;

	if (OidIsValid(relid) && (tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid))) != NULL)
	{
		Form_pg_class rel = (Form_pg_class) GETSTRUCT(tup);

		ok = rel->relowner == loader->role_oid && rel->relkind == RELKIND_RELATION &&
			strcmp(get_namespace_name(rel->relnamespace), ETL_STAGING_SCHEMA) == 0;
		ReleaseSysCache(tup);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the staging table %s of etl_exec run " INT64_FORMAT " is gone or no longer belongs to the run's role",
						staging, run_id),
				 errdetail("A replace run loads into its own staging table until its last page; the pages loaded so far were there."),
				 errhint("Start the job over with SELECT etl_execute_job(%d).", loader->job->job_id)));
	loader->staging = pstrdup(staging);
}

/*
 * Where a replace run's pages load: a new staging table, or the one the run
 * recorded.  A run checkpointed before staging tables were recorded (0.2)
 * cannot be resumed: its table is not known to be the run's own.
 */
static void
set_up_staging(EtlLoader *loader, int64 run_id,
			   const char *recorded, bool has_loaded_pages)
{
	loader->final_target = loader->target;
	if (recorded)
		adopt_staging(loader, recorded, run_id);
	else if (has_loaded_pages)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etl_exec run " INT64_FORMAT " has no recorded staging table to resume into", run_id),
				 errdetail("The run was checkpointed by an etl_exec version that did not record its staging table."),
				 errhint("Start the job over with SELECT etl_execute_job(%d).", loader->job->job_id)));
	else
		create_staging(loader, run_id);
	MemoryContextSwitchTo(loader->cxt);
	loader->target = loader->staging;
	loader->insert_relid = RangeVarGetRelid(makeRangeVarFromNameList(etl_qualified_name_list(loader->staging)),
											NoLock, false);
}

/*
 * The last page of a replace run is in: swap the staged rows into the
 * target (its indexes, constraints, triggers and grants stay as they are),
 * as the run's role, and drop the staging table.
 */
void
etl_loader_finish(EtlLoader *loader)
{
	StringInfoData cols;
	RoleSwitch	sw;

	if (loader->staging == NULL)
		return;
	initStringInfo(&cols);
	for (int i = 0; i < loader->ncols; i++)
		appendStringInfo(&cols, "%s%s", i ? ", " : "", quote_identifier(loader->cols[i].name));

	SPI_connect();
	act_as_run_role(loader, &sw);
	check_constraints_in_page();
	if (SPI_execute(psprintf("DELETE FROM %s", loader->final_target), false, 0) != SPI_OK_DELETE ||
		SPI_execute(psprintf("INSERT INTO %s (%s) SELECT %s FROM %s", loader->final_target,
							 cols.data, cols.data, loader->staging), false, 0) != SPI_OK_INSERT)
		elog(ERROR, "etl_exec: could not swap %s into %s", loader->staging, loader->final_target);
	back_from_run_role(&sw);
	if (SPI_execute(psprintf("DROP TABLE %s", loader->staging), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not drop staging table %s", loader->staging);
	SPI_finish();
}

static void
free_key_resolver(void *arg)
{
	etl_key_resolver_free((EtlKeyResolver *) arg);
}

/*
 * A key resolver for the loader's columns; malloc'd (the page reader's
 * thread may use it), freed with the loader's memory.
 */
static EtlKeyResolver *
new_key_resolver(EtlLoader *loader)
{
	char	  **names = palloc(sizeof(char *) * Max(loader->ncols, 1));
	EtlKeyResolver *keys;
	MemoryContextCallback *cb;

	for (int c = 0; c < loader->ncols; c++)
		names[c] = loader->cols[c].name;
	keys = etl_key_resolver_create(loader->ncols, names);
	if (keys == NULL)
		elog(ERROR, "etl_exec: out of memory");
	cb = MemoryContextAlloc(loader->cxt, sizeof(MemoryContextCallback));
	cb->func = free_key_resolver;
	cb->arg = keys;
	MemoryContextRegisterResetCallback(loader->cxt, cb);
	return keys;
}

/*
 * Can page_scan.c read this job's pages?  Its records, total and next
 * paths, and its column_map, must be plain member paths (records with one
 * [*]).  NULL when not.
 */
static EtlScanSpec *
build_scan_spec(EtlLoader *loader, const EtlJob *job)
{
	EtlScanSpec *spec = palloc0(sizeof(EtlScanSpec));
	EtlKeyPath	after;
	bool		star;

	if (GetDatabaseEncoding() != PG_UTF8)
		return NULL;			/* it writes \uXXXX escapes as UTF-8 */
	if (!etl_path_split(job->records, &spec->records_before, &star, &spec->records_after) || !star)
		return NULL;
	spec->total.n = -1;
	spec->next.n = -1;
	if (job->total && (!etl_path_split(job->total, &spec->total, &star, &after) || star))
		return NULL;
	if (job->next && (job->pagination == ETL_PAGINATION_NEXT_LINK ||
					  job->pagination == ETL_PAGINATION_CURSOR) &&
		(!etl_path_split(job->next, &spec->next, &star, &after) || star))
		return NULL;
	spec->ncols = loader->ncols;
	spec->column_is_json = palloc(sizeof(bool) * loader->ncols);
	spec->column_is_array = palloc(sizeof(bool) * loader->ncols);
	spec->map = palloc(sizeof(EtlKeyPath) * loader->ncols);
	spec->use_map = loader->use_map;
	for (int c = 0; c < loader->ncols; c++)
	{
		if (loader->cols[c].is_json)
			return NULL;		/* json keeps text as given: the jsonb path's text differs */
		spec->column_is_json[c] = loader->cols[c].is_jsonb;
		spec->column_is_array[c] = loader->cols[c].is_array;
		spec->map[c].n = -1;
		if (loader->cols[c].mapped &&
			(!etl_path_split(loader->cols[c].map_path, &spec->map[c], &star, &after) || star))
			return NULL;
	}
	/* the reader's own resolver: it runs in the reader's thread */
	spec->keys = new_key_resolver(loader);
	return spec;
}

/*
 * The target's columns a load may write (not dropped, generated or
 * GENERATED ALWAYS identity), with what converting values for them takes.
 */
static void
read_columns(EtlLoader *loader, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	loader->cols = palloc0(sizeof(LoaderColumn) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		LoaderColumn *col;
		Oid			infunc;
		HeapTuple	tup;
		Form_pg_type typ;

		if (att->attisdropped || att->attgenerated || att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
			continue;
		col = &loader->cols[loader->ncols++];
		col->name = pstrdup(NameStr(att->attname));
		col->typid = att->atttypid;
		col->typmod = att->atttypmod;
		col->is_jsonb = att->atttypid == JSONBOID;
		col->is_json = getBaseType(att->atttypid) == JSONOID;
		getTypeInputInfo(att->atttypid, &infunc, &col->ioparam);
		fmgr_info_cxt(infunc, &col->infunc, loader->cxt);
		tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(att->atttypid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for type %u", att->atttypid);
		typ = (Form_pg_type) GETSTRUCT(tup);
		/* array columns go as text and are cast: unnest() would flatten them */
		col->is_array = typ->typcategory == TYPCATEGORY_ARRAY;
		col->array_typid = col->is_array ? InvalidOid : typ->typarray;
		col->typlen = typ->typlen;
		col->typbyval = typ->typbyval;
		col->typalign = typ->typalign;
		ReleaseSysCache(tup);
	}
}

/* the loader's column of that name, or -1 */
static int
column_named(EtlLoader *loader, const char *name)
{
	int			found = -1;

	for (int i = 0; i < loader->ncols; i++)
		if (strcmp(loader->cols[i].name, name) == 0)
			found = i;
	return found;
}

/* The job's column_map: each column it names, with its path compiled. */
static void
read_column_map(EtlLoader *loader, const EtlJob *job)
{
	JsonbIterator *it = JsonbIteratorInit(&job->column_map->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	loader->use_map = true;
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && key)
		{
			int			found = column_named(loader, key);

			if (found < 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("column_map of job %d names column \"%s\", which target table %s does not have (or cannot be written)",
								job->job_id, key, loader->target)));
			loader->cols[found].mapped = true;
			loader->cols[found].map_path =
				etl_path_compile(pnstrdup(v.val.string.val, v.val.string.len));
		}
	}
}

/* The job's key_columns, each a column of the target. */
static void
mark_key_columns(EtlLoader *loader, const EtlJob *job)
{
	ListCell   *lc;

	foreach(lc, job->key_columns)
	{
		char	   *key = (char *) lfirst(lc);
		bool		found = false;

		for (int i = 0; i < loader->ncols; i++)
			if (strcmp(loader->cols[i].name, key) == 0)
				found = loader->cols[i].is_key = true;
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key column \"%s\" of job %d is not a column of target table %s",
							key, job->job_id, loader->target)));
	}
}

/*
 * A target another extension takes over loads through SQL it plans; refuse
 * at the start of the run what no such SQL can load.
 */
static void
check_target_kind(EtlLoader *loader, const EtlJob *job)
{
	const char *dist = loader->kind.distribution_column;
	ListCell   *lc;
	bool		keyed = false;

	if (loader->kind.kind == ETL_TARGET_CITUS_APPEND)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("target table %s is a Citus append-distributed table, which etl_exec cannot load",
						loader->target),
				 errdetail("etl_exec loads Citus tables with INSERT ... SELECT, which Citus does not support for append distribution."),
				 errhint("Load a hash-distributed table (create_distributed_table) or a reference table instead.")));
	if (!loader->upsert || loader->kind.kind != ETL_TARGET_CITUS_DISTRIBUTED || dist == NULL)
		return;
	foreach(lc, job->key_columns)
		keyed |= strcmp((char *) lfirst(lc), dist) == 0;
	if (!keyed)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("upsert into Citus distributed table %s needs its distribution column \"%s\" among the key columns of job %d",
						loader->target, dist, job->job_id),
				 errdetail("Citus enforces unique keys, and so ON CONFLICT, only when they include the distribution column."),
				 errhint("Add \"%s\" to the job's key_columns and to the table's unique key.", dist)));
}

/*
 * The page table of a run whose target another extension takes over: a
 * temporary table of the session (gone with the worker, seen by no one
 * else) with the loader's columns, no constraints and no defaults (a
 * column a page leaves out is left out of the INSERT too, so the target's
 * default applies), owned by the run's role, which COPYs into it and
 * INSERTs from it.  Made by the worker itself: a restricted operation may
 * not create temporary tables.
 */
static void
create_page_table(EtlLoader *loader, int64 run_id)
{
	char	   *name = psprintf("etl_exec_page_" INT64_FORMAT, run_id);
	char	   *role = GetUserNameFromId(loader->role_oid, false);
	StringInfoData sql;
	Oid			relid;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TEMPORARY TABLE %s (", quote_identifier(name));
	for (int c = 0; c < loader->ncols; c++)
		appendStringInfo(&sql, "%s%s %s", c ? ", " : "", quote_identifier(loader->cols[c].name),
						 format_type_extended(loader->cols[c].typid, loader->cols[c].typmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
	appendStringInfoChar(&sql, ')');

	SPI_connect();
	/*
	 * A worker runs one queued run after another in the same session: an
	 * earlier segment of this run may have left its page table here.
	 */
	if (SPI_execute(psprintf("DROP TABLE IF EXISTS pg_temp.%s", quote_identifier(name)),
					false, 0) != SPI_OK_UTILITY ||
		SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY ||
		SPI_execute(psprintf("ALTER TABLE pg_temp.%s OWNER TO %s", quote_identifier(name),
							 quote_identifier(role)), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not create page table %s", name);
	SPI_finish();
	MemoryContextSwitchTo(loader->cxt);
	relid = RangeVarGetRelid(makeRangeVar("pg_temp", name, -1), NoLock, false);
	loader->page_relid = relid;
	loader->page_table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), name);
}

/*
 * The run is over: drop its page table (if it has one), so that a worker
 * going on to other queued runs does not gather temporary tables.
 */
void
etl_loader_end(EtlLoader *loader)
{
	if (loader == NULL || loader->page_table == NULL)
		return;
	SPI_connect();
	if (SPI_execute(psprintf("DROP TABLE IF EXISTS %s", loader->page_table), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "etl_exec: could not drop page table %s", loader->page_table);
	SPI_finish();
	loader->page_table = NULL;
}

/*
 * A loader for the job's target (the table the run froze), writing as
 * role_oid: its columns, column_map and keys checked against the table,
 * a replace run's staging table made or adopted, and the page reader's
 * spec when the reader can read the job's pages.
 */
EtlLoader *
etl_loader_create(const EtlJob *job, Oid role_oid, MemoryContext parent,
				  int64 run_id, bool dry_run, const char *staging, bool has_loaded_pages)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "etl_exec loader", ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	EtlLoader  *loader = palloc0(sizeof(EtlLoader));
	RangeVar   *rv;
	Oid			relid;
	Relation	rel;

	loader->cxt = cxt;
	loader->job = job;
	loader->role_oid = role_oid;
	loader->upsert = strcmp(job->load_mode, "upsert") == 0;

	rv = makeRangeVarFromNameList(etl_qualified_name_list(job->target_table));
	relid = RangeVarGetRelid(rv, AccessShareLock, true);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("target table \"%s\" does not exist", job->target_table)));
	rel = relation_open(relid, NoLock);
	loader->target = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												RelationGetRelationName(rel));
	read_columns(loader, rel);
	relation_close(rel, NoLock);

	if (job->column_map)
		read_column_map(loader, job);
	mark_key_columns(loader, job);
	loader->keys = new_key_resolver(loader);

	loader->insert_relid = relid;
	etl_target_kind(relid, &loader->kind);
	check_target_kind(loader, job);
	if (strcmp(job->load_mode, "replace") == 0 && !dry_run)
		set_up_staging(loader, run_id, staging, has_loaded_pages);
	else if (loader->kind.kind != ETL_TARGET_PLAIN && !loader->upsert && !dry_run)
		create_page_table(loader, run_id);
	loader->use_copy = !loader->upsert;
	if (loader->use_copy)
		loader->scan = build_scan_spec(loader, job);

	MemoryContextSwitchTo(old);
	return loader;
}

/* The column the key at a position of a record names, or -1. */
static int
key_column(EtlLoader *loader, int position, const char *key, int len)
{
	int			col = etl_key_resolver_column(loader->keys, position, key, len);

	if (col == -2)
		elog(ERROR, "etl_exec: out of memory");
	return col;
}

/* the text form of a JSON value, as a column's input function takes it */
static char *
json_value_text(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return NULL;
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		case jbvBinary:
			return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
		default:
			{
				Jsonb	   *j = JsonbValueToJsonb(v);

				return JsonbToCString(NULL, &j->root, VARSIZE(j));
			}
	}
}

/*
 * A JSON array as a PostgreSQL array literal: ["a", 1, null] -> {"a","1",NULL}.
 * Nested arrays become nested literals; objects are quoted JSON text.
 */
static void
append_array_literal(StringInfo buf, JsonbContainer *container)
{
	JsonbIterator *it = JsonbIteratorInit(container);
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		first = true;

	appendStringInfoChar(buf, '{');
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *text;

		if (tok != WJB_ELEM)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		if (v.type == jbvNull)
		{
			appendStringInfoString(buf, "NULL");
			continue;
		}
		if (v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
		{
			append_array_literal(buf, v.val.binary.data);
			continue;
		}
		text = json_value_text(&v);
		enlargeStringInfo(buf, 2 * strlen(text) + 3);
		buf->len += etl_quote_array_element(buf->data + buf->len, text, strlen(text));
		buf->data[buf->len] = '\0';
	}
	appendStringInfoChar(buf, '}');
}

/*
 * The text a column's input function gets for a JSON value (NULL for null):
 * strings as they are, other scalars as their JSON text, JSON text for
 * json/jsonb columns, array literals for JSON arrays bound for array columns.
 */
static char *
column_text(LoaderColumn *col, JsonbValue *v)
{
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (col->is_json || col->is_jsonb)
	{
		Jsonb	   *j = JsonbValueToJsonb(v);

		return JsonbToCString(NULL, &j->root, VARSIZE(j));
	}
	if (col->is_array && v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		StringInfoData buf;

		initStringInfo(&buf);
		append_array_literal(&buf, v->val.binary.data);
		return buf.data;
	}
	return json_value_text(v);
}

static void
convert_value(EtlLoader *loader, int c, JsonbValue *v, Datum *value, bool *isnull,
			  ConvertPosition *pos)
{
	LoaderColumn *col = &loader->cols[c];
	char	   *text;

	*isnull = (v == NULL || v->type == jbvNull);
	*value = (Datum) 0;
	if (*isnull)
		return;
	if (col->is_jsonb)
	{
		/* straight from the parsed document: no text round trip */
		*value = JsonbPGetDatum(JsonbValueToJsonb(v));
		return;
	}
	text = column_text(col, v);
	pos->column = col->name;
	pos->value = text;
	*value = InputFunctionCall(&col->infunc, text, col->ioparam, col->typmod);
	if (!OidIsValid(col->array_typid))
		*value = CStringGetTextDatum(text);	/* cast again in SQL */
	pos->column = NULL;
}

/*
 * Each record's values by column: slots[r * ncols + c] (jbvNull where a
 * record lacks the column), and which columns the page mentions.
 */
static void
collect_records(EtlLoader *loader, JsonbValue *records, int nrec, int32 page_index,
				JsonbValue *slots, bool *present)
{
	int			ncols = loader->ncols;

	for (int r = 0; r < nrec; r++)
	{
		JsonbValue *rec = &records[r];
		JsonbValue *row = &slots[r * ncols];

		if (rec->type != jbvBinary || !JsonContainerIsObject(rec->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("record %d of page %d is not a JSON object", r + 1, page_index + 1),
					 errhint("Check the job's records_path: it must lead to the records themselves.")));
		if (loader->use_map)
		{
			for (int c = 0; c < ncols; c++)
				if (loader->cols[c].mapped)
				{
					JsonbValue *v = etl_path_first(loader->cols[c].map_path, rec);

					if (v)
						row[c] = *v;
					present[c] = true;
				}
		}
		else
		{
			JsonbIterator *it = JsonbIteratorInit(rec->val.binary.data);
			JsonbValue	kv;
			JsonbIteratorToken tok;
			int			position = 0;
			int			col = -1;

			while ((tok = JsonbIteratorNext(&it, &kv, true)) != WJB_DONE)
			{
				if (tok == WJB_KEY)
					col = key_column(loader, position++, kv.val.string.val, kv.val.string.len);
				else if (tok == WJB_VALUE && col >= 0)
				{
					row[col] = kv;
					present[col] = true;
				}
			}
		}
	}
}

/*
 * The INSERT of a page that mentions these columns: one array argument per
 * column (argtypes filled in), unnested into rows; for upsert, the last
 * record of each key wins and updates the row already there.
 */
static char *
insert_sql(EtlLoader *loader, Bitmapset *columns, Oid *argtypes)
{
	StringInfoData sql;
	StringInfoData insert_cols;
	StringInfoData select_cols;
	StringInfoData unnest_args;
	StringInfoData aliases;
	StringInfoData key_exprs;
	StringInfoData key_cols;
	StringInfoData updates;
	int			nargs = 0;
	int			c = -1;

	initStringInfo(&sql);
	initStringInfo(&insert_cols);
	initStringInfo(&select_cols);
	initStringInfo(&unnest_args);
	initStringInfo(&aliases);
	initStringInfo(&key_exprs);
	initStringInfo(&key_cols);
	initStringInfo(&updates);
	while ((c = bms_next_member(columns, c)) >= 0)
	{
		LoaderColumn *col = &loader->cols[c];
		const char *sep = nargs ? ", " : "";

		nargs++;
		appendStringInfo(&insert_cols, "%s%s", sep, quote_identifier(col->name));
		if (OidIsValid(col->array_typid))
		{
			argtypes[nargs - 1] = col->array_typid;
			appendStringInfo(&select_cols, "%su.v%d", sep, nargs);
		}
		else
		{
			argtypes[nargs - 1] = TEXTARRAYOID;
			appendStringInfo(&select_cols, "%su.v%d::%s", sep, nargs,
							 format_type_with_typemod(col->typid, col->typmod));
		}
		appendStringInfo(&unnest_args, "%s$%d", sep, nargs);
		appendStringInfo(&aliases, "%sv%d", sep, nargs);
		if (col->is_key)
		{
			appendStringInfo(&key_exprs, "%su.v%d", key_exprs.len ? ", " : "", nargs);
			appendStringInfo(&key_cols, "%s%s", key_cols.len ? ", " : "", quote_identifier(col->name));
		}
		else
			appendStringInfo(&updates, "%s%s = EXCLUDED.%s", updates.len ? ", " : "",
							 quote_identifier(col->name), quote_identifier(col->name));
	}

	if (!loader->upsert)
		appendStringInfo(&sql, "INSERT INTO %s (%s) SELECT %s FROM unnest(%s) AS u(%s)",
						 loader->target, insert_cols.data, select_cols.data,
						 unnest_args.data, aliases.data);
	else
		appendStringInfo(&sql,
						 "INSERT INTO %s (%s) SELECT DISTINCT ON (%s) %s "
						 "FROM unnest(%s) WITH ORDINALITY AS u(%s, ord) "
						 "ORDER BY %s, u.ord DESC "
						 "ON CONFLICT (%s) DO %s%s",
						 loader->target, insert_cols.data, key_exprs.data, select_cols.data,
						 unnest_args.data, aliases.data, key_exprs.data, key_cols.data,
						 updates.len ? "UPDATE SET " : "NOTHING", updates.data);
	return sql.data;
}

/* The saved plan of insert_sql() for these columns (the last 16 are kept). */
static LoaderPlan *
plan_for_columns(EtlLoader *loader, Bitmapset *columns)
{
	ListCell   *lc;
	LoaderPlan *cp;
	char	   *sql;
	int			nargs = bms_num_members(columns);
	MemoryContext old;

	foreach(lc, loader->plans)
	{
		cp = (LoaderPlan *) lfirst(lc);
		if (bms_equal(cp->columns, columns))
			return cp;
	}

	old = MemoryContextSwitchTo(loader->cxt);
	cp = palloc0(sizeof(LoaderPlan));
	cp->columns = bms_copy(columns);
	cp->argtypes = palloc(sizeof(Oid) * nargs);
	sql = insert_sql(loader, columns, cp->argtypes);

	cp->plan = SPI_prepare(sql, nargs, cp->argtypes);
	if (cp->plan == NULL)
		elog(ERROR, "etl_exec: could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(cp->plan);
	/* SPI calls leave CurrentMemoryContext at SPI's own: switch back */
	MemoryContextSwitchTo(loader->cxt);
	/* one plan per set of columns pages mention: keep the last few */
	if (list_length(loader->plans) >= 16)
	{
		LoaderPlan *oldest = (LoaderPlan *) linitial(loader->plans);

		SPI_freeplan(oldest->plan);
		loader->plans = list_delete_first(loader->plans);
	}
	loader->plans = lappend(loader->plans, cp);
	MemoryContextSwitchTo(old);
	return cp;
}

/* COPY ignores row-level security: with RLS on, loads go through INSERT */
static bool
rls_enabled(EtlLoader *loader)
{
	return check_enable_rls(loader->insert_relid, loader->role_oid, true) == RLS_ENABLED;
}

static void
no_column_matches(EtlLoader *loader, int32 page_index)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("no key of the records on page %d matches a column of %s",
					page_index + 1, loader->target),
			 errhint("Name the columns like the record keys (case does not matter), or set the job's column_map.")));
}

/* ---------- the COPY path ---------- */

/* the page being fed to COPY; COPY's data-source callback takes no argument */
static struct
{
	const char *data;
	int			len;
	int			pos;
} copy_source;

static int
copy_read_page(void *outbuf, int minread, int maxread)
{
	int			n = Min(maxread, copy_source.len - copy_source.pos);

	memcpy(outbuf, copy_source.data + copy_source.pos, n);
	copy_source.pos += n;
	return n;
}

/*
 * COPY's own error context says "COPY table, line N, column c: "value""
 * (or ": null input", or no column); a run's errors name the page too, and
 * call a line what it is, a record.  Rewrites that line of an error's
 * context in place; leaves a context it does not recognise (a translated
 * one, say) as it is.
 */
static void
name_copy_position(ErrorData *edata, int32 page_index)
{
	StringInfoData buf;
	const char *line;
	const char *line_end;
	const char *p;
	char	   *end;
	unsigned long long record;

	if (edata->context == NULL)
		return;
	for (line = edata->context; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (strncmp(line, "COPY ", 5) == 0)
			break;
	if (line == NULL || (p = strstr(line, ", line ")) == NULL)
		return;
	line_end = line + strcspn(line, "\n");
	record = strtoull(p + 7, &end, 10);
	if (end == p + 7 || end > line_end)
		return;

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, edata->context, line - edata->context);
	appendStringInfo(&buf, "page %d, record %llu", page_index + 1, record);
	if (strncmp(end, ", column ", 9) == 0)
	{
		const char *colon = strstr(end + 9, ": ");

		if (colon == NULL || colon > line_end)
			return;
		appendStringInfoString(&buf, ", column \"");
		appendBinaryStringInfo(&buf, end + 9, colon - (end + 9));
		appendStringInfoString(&buf, "\", value ");
		if (strncmp(colon + 2, "null input", 10) == 0)
			appendStringInfoString(&buf, "null");
		else
			appendBinaryStringInfo(&buf, colon + 2, line_end - (colon + 2));
	}
	appendStringInfoString(&buf, line_end);
	edata->context = buf.data;
}

/* one value as COPY text: what the column type's input function takes */
static void
append_copy_value(StringInfo buf, LoaderColumn *col, JsonbValue *v)
{
	char	   *text;

	if (v->type == jbvString && !col->is_json && !col->is_jsonb)
		etl_append_copy_text(buf, v->val.string.val, v->val.string.len);
	else if ((text = column_text(col, v)) == NULL)
		appendStringInfoString(buf, "\\N");
	else
		etl_append_copy_text(buf, text, strlen(text));
}

/* the pages being moved from the page table, for the error context */
static void
page_move_error_context(void *arg)
{
	EtlLoader  *loader = (EtlLoader *) arg;

	if (loader->batch_first == loader->batch_last)
		errcontext("loading page %d", loader->batch_first + 1);
	else
		errcontext("loading pages %d to %d", loader->batch_first + 1, loader->batch_last + 1);
}

/*
 * Move the rows in the page table (they carry the columns cols) into the
 * target with INSERT ... SELECT, which the extension that owns the target
 * plans, and empty it; as the run's role, whose privileges the executor
 * checks.  Every row must go in: a row that a SELECT on the target would
 * not see must not count as loaded.
 *
 * What the page table holds is transactional (a page rolled back takes its
 * rows, and a move it made, with it); the loader's counters are not, so
 * the rows are counted here.
 */
static void
move_page_table(EtlLoader *loader, const bool *cols)
{
	StringInfoData names;
	ErrorContextCallback errcb;
	uint64		rows;
	bool		isnull;

	initStringInfo(&names);
	for (int c = 0; c < loader->ncols; c++)
		if (cols[c])
			appendStringInfo(&names, "%s%s", names.len ? ", " : "",
							 quote_identifier(loader->cols[c].name));
	errcb.callback = page_move_error_context;
	errcb.arg = loader;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	SPI_connect();
	/* not read-only: a read-only query would not see what COPY just wrote */
	if (SPI_execute(psprintf("SELECT count(*) FROM %s", loader->page_table), false, 0) != SPI_OK_SELECT)
		elog(ERROR, "etl_exec: could not count the rows of %s", loader->page_table);
	rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (rows > 0)
	{
		if (SPI_execute(psprintf("INSERT INTO %s (%s) SELECT %s FROM %s", loader->target,
								 names.data, names.data, loader->page_table), false, 0) != SPI_OK_INSERT)
			elog(ERROR, "etl_exec: INSERT into %s failed", loader->target);
		if (SPI_processed != rows)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("%s %s took " UINT64_FORMAT " of " UINT64_FORMAT " rows",
							etl_target_kind_name(loader->kind.kind), loader->target,
							(uint64) SPI_processed, rows)));
		if (SPI_execute(psprintf("TRUNCATE %s", loader->page_table), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "etl_exec: could not empty page table %s", loader->page_table);
	}
	SPI_finish();
	error_context_stack = errcb.previous;
	loader->batch_rows = 0;
	loader->batch_bytes = 0;
	loader->batch_first = -1;
}

/*
 * After COPY put a page into the page table: move what it holds when it
 * is enough, or at once when this page mentions other columns than the
 * rows before it (moved first: the page table's rows all carry the same
 * columns, those of the run's first page, so that a column left out keeps
 * the target's default).
 */
static void
note_page_copied(EtlLoader *loader, const bool *present, uint64 copied, int len, int32 page_index)
{
	loader->batch_rows += copied;
	loader->batch_bytes += len;
	if (loader->batch_first < 0)
		loader->batch_first = page_index;
	loader->batch_last = page_index;
	if (memcmp(present, loader->batch_cols, sizeof(bool) * loader->ncols) != 0)
	{
		move_page_table(loader, present);
		return;
	}
	if (loader->batch_rows >= ETL_PAGE_TABLE_ROWS || loader->batch_bytes >= ETL_PAGE_TABLE_BYTES)
		move_page_table(loader, loader->batch_cols);
}

/*
 * Before a commit: the rows still in the page table go into the target,
 * in the transaction that commits the checkpoint covering them.
 */
void
etl_loader_flush(EtlLoader *loader)
{
	RoleSwitch	sw;

	if (loader == NULL || !OidIsValid(loader->page_relid) || loader->batch_cols == NULL)
		return;
	etl_cap_lock_waits();
	act_as_run_role(loader, &sw);
	check_constraints_in_page();
	move_page_table(loader, loader->batch_cols);
	back_from_run_role(&sw);
}

/*
 * Whether the target's rows are committed by other servers as well as this
 * one (a Citus table: its shards commit by two-phase commit after our own
 * commit), so that our commits must be durable before theirs.
 */
bool
etl_loader_commits_remotely(EtlLoader *loader)
{
	switch (loader->kind.kind)
	{
		case ETL_TARGET_CITUS_DISTRIBUTED:
		case ETL_TARGET_CITUS_REFERENCE:
		case ETL_TARGET_CITUS_LOCAL:
		case ETL_TARGET_CITUS_APPEND:
			return true;
		case ETL_TARGET_PLAIN:
		case ETL_TARGET_HYPERTABLE:
			break;
	}
	return false;
}

/*
 * Before COPY puts a page with other columns than the page table's rows
 * into it: move those first.  The first page fixes the page table's
 * columns for the run.
 */
static void
prepare_page_table(EtlLoader *loader, const bool *present)
{
	if (loader->batch_cols == NULL)
	{
		loader->batch_cols = MemoryContextAlloc(loader->cxt, sizeof(bool) * loader->ncols);
		memcpy(loader->batch_cols, present, sizeof(bool) * loader->ncols);
		loader->batch_first = -1;
	}
	else if (memcmp(present, loader->batch_cols, sizeof(bool) * loader->ncols) != 0)
		move_page_table(loader, loader->batch_cols);
}

/*
 * COPY the rendered rows (the present columns, in column order) into the
 * table the pages load into -- or, for a target another extension takes
 * over, into the page table and from there into the target -- as the
 * run's role, after checking that role's INSERT privilege on those
 * columns, as COPY's own caller would.
 */
/*
 * The run's role must be able to INSERT the page's columns into the target
 * (checked as the executor would; for a page table, which the role owns).
 */
static void
check_target_insert(EtlLoader *loader, const bool *present)
{
	Relation	rel = table_open(loader->insert_relid, AccessShareLock);
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
															   NULL, false, false);
	Bitmapset  *inserted = NULL;

	for (int c = 0; c < loader->ncols; c++)
		if (present[c])
			inserted = bms_add_member(inserted,
									  attnameAttNum(rel, loader->cols[c].name, false) - FirstLowInvalidHeapAttributeNumber);
	etl_check_insert_permission(pstate, nsitem, inserted);
	table_close(rel, NoLock);
}

static void
copy_rows(EtlLoader *loader, const char *text, int len, const bool *present, int32 page_index)
{
	int			ncols = loader->ncols;
	List	   *attnames = NIL;
	Oid			copy_relid = OidIsValid(loader->page_relid) ? loader->page_relid : loader->insert_relid;
	Relation	rel;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	CopyFromState cstate;
	Bitmapset  *inserted = NULL;
	MemoryContext cxt = CurrentMemoryContext;
	uint64		copied = 0;
	RoleSwitch	sw;

	for (int c = 0; c < ncols; c++)
		if (present[c])
			attnames = lappend(attnames, makeString(loader->cols[c].name));
	copy_source.data = text;
	copy_source.len = len;
	copy_source.pos = 0;
	/* a load blocked on a lock must not carry the run past its deadline */
	etl_cap_lock_waits();
	act_as_run_role(loader, &sw);
	check_constraints_in_page();
	if (OidIsValid(loader->page_relid))
	{
		prepare_page_table(loader, present);
		/* the rows are for the target: its INSERT privilege decides, now */
		check_target_insert(loader, present);
	}

	rel = table_open(copy_relid, RowExclusiveLock);
	pstate = make_parsestate(NULL);
	nsitem = addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
	for (int c = 0; c < ncols; c++)
		if (present[c])
			inserted = bms_add_member(inserted,
									  attnameAttNum(rel, loader->cols[c].name, false) - FirstLowInvalidHeapAttributeNumber);
	etl_check_insert_permission(pstate, nsitem, inserted);

	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_read_page, attnames,
						   list_make1(makeDefElem("encoding",
												  (Node *) makeString((char *) GetDatabaseEncodingName()), -1)));
	PG_TRY();
	{
		copied = CopyFrom(cstate);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		name_copy_position(edata, page_index);
		ReThrowError(edata);
	}
	PG_END_TRY();
	EndCopyFrom(cstate);
	table_close(rel, NoLock);

	if (OidIsValid(loader->page_relid))
		note_page_copied(loader, present, copied, len, page_index);
	back_from_run_role(&sw);
}

/*
 * Load a page through COPY: collect each record's values by column, render
 * the columns the page mentions as COPY text, and COPY it in as the run's
 * role after checking that role's INSERT privilege on those columns.
 */
static int
load_page_copy(EtlLoader *loader, JsonbValue *records, int nrec, int32 page_index)
{
	int			ncols = loader->ncols;
	JsonbValue *slots = palloc0(sizeof(JsonbValue) * nrec * ncols);	/* jbvNull is 0 */
	bool	   *present = palloc0(sizeof(bool) * ncols);
	bool		any = false;
	StringInfoData text;

	collect_records(loader, records, nrec, page_index, slots, present);

	for (int c = 0; c < ncols; c++)
		any |= present[c];
	if (!any)
		no_column_matches(loader, page_index);

	initStringInfo(&text);
	for (int r = 0; r < nrec; r++)
	{
		bool		first = true;

		for (int c = 0; c < ncols; c++)
		{
			if (!present[c])
				continue;
			if (!first)
				appendStringInfoChar(&text, '\t');
			first = false;
			append_copy_value(&text, &loader->cols[c], &slots[r * ncols + c]);
		}
		appendStringInfoChar(&text, '\n');
	}
	copy_rows(loader, text.data, text.len, present, page_index);
	return nrec;
}

/*
 * Convert the page's values (slots, by record and column) with the column
 * types' input functions, into one array of values and nulls per column
 * the page mentions; a value that does not fit names its place.
 */
static void
convert_page(EtlLoader *loader, JsonbValue *slots, int nrec, const bool *present,
			 int32 page_index, Datum **values, bool **nulls)
{
	int			ncols = loader->ncols;
	ConvertPosition pos = {0};
	ErrorContextCallback errcb;

	pos.page_index = page_index;
	errcb.callback = convert_error_context;
	errcb.arg = &pos;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	for (int c = 0; c < ncols; c++)
	{
		values[c] = palloc(sizeof(Datum) * nrec);
		nulls[c] = palloc(sizeof(bool) * nrec);
		if (!present[c])
			continue;
		for (int r = 0; r < nrec; r++)
		{
			pos.record = r;
			convert_value(loader, c, &slots[r * ncols + c], &values[c][r], &nulls[c][r], &pos);
		}
	}
	error_context_stack = errcb.previous;
}

/*
 * The columns a page mentions, as a set: some must be, and for upsert every
 * key column.
 */
static Bitmapset *
page_columns(EtlLoader *loader, const bool *present, int32 page_index)
{
	Bitmapset  *columns = NULL;

	for (int c = 0; c < loader->ncols; c++)
		if (present[c])
			columns = bms_add_member(columns, c);
	if (columns == NULL)
		no_column_matches(loader, page_index);
	if (loader->upsert)
		for (int c = 0; c < loader->ncols; c++)
			if (loader->cols[c].is_key && !present[c])
				ereport(ERROR,
						(errcode(ERRCODE_NOT_NULL_VIOLATION),
						 errmsg("key column \"%s\" is missing from every record of page %d",
								loader->cols[c].name, page_index + 1),
						 errhint("An upsert needs the key in each record; check key_columns and column_map.")));
	return columns;
}

/* INSERT the converted columns of a page: one array per column. */
static void
insert_page(EtlLoader *loader, Bitmapset *columns, Datum **values, bool **nulls, int nrec)
{
	LoaderPlan *plan;
	Datum	   *args = palloc(sizeof(Datum) * loader->ncols);
	int			nargs = 0;
	int			c = -1;
	int			dims[1] = {nrec};
	int			lbs[1] = {1};

	SPI_connect();
	plan = plan_for_columns(loader, columns);
	while ((c = bms_next_member(columns, c)) >= 0)
	{
		LoaderColumn *col = &loader->cols[c];

		if (OidIsValid(col->array_typid))
			args[nargs++] = PointerGetDatum(construct_md_array(values[c], nulls[c], 1, dims, lbs,
															   col->typid, col->typlen,
															   col->typbyval, col->typalign));
		else
			args[nargs++] = PointerGetDatum(construct_md_array(values[c], nulls[c], 1, dims, lbs,
															   TEXTOID, -1, false, TYPALIGN_INT));
	}

	if (SPI_execute_plan(plan->plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "etl_exec: INSERT into %s failed", loader->target);
	SPI_finish();
}

/*
 * Load one page's records (a jsonb array).  With dry_run the values are
 * converted (so bad values are found) but nothing is written.  Returns the
 * number of records.  Runs in the caller's memory context, which the
 * caller resets per page.
 */
int
etl_loader_load_page(EtlLoader *loader, JsonbValue *records, int nrec, int32 page_index,
					 bool dry_run)
{
	int			ncols = loader->ncols;
	Datum	  **values = palloc(sizeof(Datum *) * ncols);
	bool	  **nulls = palloc(sizeof(bool *) * ncols);
	bool	   *present = palloc0(sizeof(bool) * ncols);
	JsonbValue *slots;
	Bitmapset  *columns;
	RoleSwitch	sw;

	if (nrec == 0)
		return 0;
	if (loader->use_copy && !dry_run && !rls_enabled(loader))
		return load_page_copy(loader, records, nrec, page_index);
	slots = palloc0(sizeof(JsonbValue) * nrec * ncols); /* jbvNull is 0 */
	collect_records(loader, records, nrec, page_index, slots, present);

	/* input functions (domain checks) are user code too */
	etl_cap_lock_waits();
	act_as_run_role(loader, &sw);
	check_constraints_in_page();
	convert_page(loader, slots, nrec, present, page_index, values, nulls);
	columns = page_columns(loader, present, page_index);
	if (!dry_run)
		insert_page(loader, columns, values, nulls, nrec);
	back_from_run_role(&sw);
	return nrec;
}

/*
 * For a dry run: which column takes which key of the first record, as the
 * JSON members "columns": {...}, "unmapped_keys": [...].
 */
char *
etl_loader_describe_mapping(EtlLoader *loader, JsonbValue *records, int nrec)
{
	StringInfoData buf;
	bool		first = true;
	bool	   *used = palloc0(sizeof(bool) * loader->ncols);
	StringInfoData unmapped;

	initStringInfo(&buf);
	initStringInfo(&unmapped);
	appendStringInfoString(&buf, "\"columns\": {");
	if (loader->use_map)
	{
		for (int c = 0; c < loader->ncols; c++)
			if (loader->cols[c].mapped)
			{
				if (!first)
					appendStringInfoChar(&buf, ',');
				escape_json(&buf, loader->cols[c].name);
				appendStringInfoString(&buf, ":\"(column_map)\"");
				first = false;
			}
		appendStringInfoString(&buf, "}, \"unmapped_keys\": []");
		return buf.data;
	}

	/* keys of the first record, in order */
	if (nrec > 0 && records[0].type == jbvBinary && JsonContainerIsObject(records[0].val.binary.data))
	{
		JsonbIterator *rit;
		JsonbValue	kv;
		JsonbIteratorToken rtok;
		int			position = 0;

		rit = JsonbIteratorInit(records[0].val.binary.data);
		while ((rtok = JsonbIteratorNext(&rit, &kv, true)) != WJB_DONE)
		{
			char	   *key;
			int			c;

			if (rtok != WJB_KEY)
				continue;
			key = pnstrdup(kv.val.string.val, kv.val.string.len);
			c = key_column(loader, position++, kv.val.string.val, kv.val.string.len);
			if (c >= 0 && !used[c])
			{
				used[c] = true;
				if (!first)
					appendStringInfoChar(&buf, ',');
				escape_json(&buf, loader->cols[c].name);
				appendStringInfoChar(&buf, ':');
				escape_json(&buf, key);
				first = false;
			}
			else if (c < 0)
			{
				if (unmapped.len)
					appendStringInfoChar(&unmapped, ',');
				escape_json(&unmapped, key);
			}
		}
	}
	appendStringInfo(&buf, "}, \"unmapped_keys\": [%s]", unmapped.data);
	return buf.data;
}

/*
 * The page reader's spec for this job, or NULL when its pages must be
 * parsed as jsonb (a shape it does not handle, upsert, row-level security).
 */
const EtlScanSpec *
etl_loader_scan_spec(EtlLoader *loader)
{
	if (loader->scan == NULL || rls_enabled(loader))
		return NULL;
	return loader->scan;
}

/* Whether page_scan.c could read a page: an API it cannot read, it stops trying. */
void
etl_loader_note_scan(EtlLoader *loader, bool scanned_ok)
{
	if (scanned_ok)
		loader->scan_misses = 0;
	else if (++loader->scan_misses >= 3)
		loader->scan = NULL;	/* do not read its pages twice */
}

/* Load the records of a page page_scan.c has read. */
void
etl_loader_copy_scanned(EtlLoader *loader, EtlScanResult *result, int32 page_index)
{
	bool		any = false;

	if (result->nrec == 0)
		return;
	for (int c = 0; c < loader->ncols; c++)
		any |= result->present[c];
	if (!any)
		no_column_matches(loader, page_index);
	copy_rows(loader, result->copy_text, result->copy_len, result->present, page_index);
}
