/*-------------------------------------------------------------------------
 *
 * loader.c
 *	  Loads one page of JSON records into the job's target table.
 *
 * Every page is rendered as COPY text -- by the page reader (page_scan.c)
 * in one pass over the body, or from the jsonb-parsed records -- and read
 * by PostgreSQL's COPY machinery (BeginCopyFrom with a data-source
 * callback), with the column types' input functions: a value that does
 * not fit fails with the page, record, column and value in the error
 * context.  Everything runs as the run's role: its privileges, and its
 * alone, decide what the run may write.  COPY itself checks no
 * privileges, so the role's are checked first, as the statement that
 * writes the page would check them.
 *
 * Append and replace pages COPY straight into the target (a replace
 * run's staging table), with multi-inserts; triggers, defaults,
 * constraints and partitions work as for any COPY.  Other pages go through
 * the run's page table (page_table.c) and an INSERT ... SELECT:
 *
 *	- an upsert's page is read by COPY's parser into rows and merged by one
 *	  INSERT ... SELECT DISTINCT ON (keys) ... ON CONFLICT (keys) DO UPDATE,
 *	  where a key repeated within the page keeps its last record -- unless
 *	  its keys are all new, when COPY inserts it straight away (see
 *	  insert_new_rows);
 *	- a page for a table with row-level security (checked per page) is
 *	  inserted the same way: COPY would bypass the policies;
 *	- a table another extension takes over (a Citus distributed, reference
 *	  or local table, a TimescaleDB hypertable: target_kind.c) must not be
 *	  fed to COPY directly -- COPY would write the coordinator's empty
 *	  shell -- so its pages COPY into the page table and move from there
 *	  in large INSERT ... SELECT statements, which the extension plans
 *	  (Citus sends the rows to the shards, and commits them with the
 *	  checkpoint by two-phase commit).  A replace run loads a local staging
 *	  table and swaps it in with INSERT ... SELECT.  A table no SQL path can
 *	  load (Citus append distribution) is refused when the run starts.
 *
 * Dry runs convert each value in C with the column type's input function
 * and write nothing.
 *
 * With on_bad_record = 'reject', a record that a column's type input or a
 * constraint refuses is rejected (dw_etl_rejects) and the rest of its page
 * loads: see "rejected records" below.
 *
 * Without a column_map a target column takes the record key of the same
 * name, compared case-insensitively (key_resolver.c); columns that no
 * record of a page mentions are left out of that page's INSERT, so their
 * defaults apply.  A column_map value "{param:NAME}" gives its column the
 * run's (or the page's partition's) parameter NAME in every record: the
 * value is rendered once per partition and added to each row of the COPY
 * text (append_parameters).  Such entries do not turn mapping by name off;
 * jsonpath entries do.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/heap.h"
#include "catalog/namespace.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
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
#include "utils/resowner.h"
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
	Oid			collation;
	FmgrInfo	infunc;
	Oid			ioparam;
	EtlPath    *map_path;		/* from column_map, or NULL */
	bool		mapped;			/* named in column_map with a jsonpath */
	char	   *param_name;		/* column_map "{param:NAME}": NAME, or NULL */
	char	   *param_value;	/* that parameter's value now (NULL: null) */
	bool		not_null;		/* the column is NOT NULL */
	char	   *param_text;		/* ... as COPY text */
	bool		is_key;
} LoaderColumn;

/* on_bad_record = 'reject': the page being loaded (see write_or_reject) */
typedef struct PageRejects
{
	int64		run_rejected;	/* the run's rejects before this page */
	int32		partition_index;
	const char *body;			/* the page's body, for its records' JSON */
	size_t		len;
	const char *url;
	JsonbValue *records;		/* the page's records, once parsed */
	int			nrec;
	List	   *rejects;		/* EtlRejectedRecord * of this page */
	bool		redoing;		/* the page is being redone by halves */
} PageRejects;

struct EtlLoader
{
	MemoryContext cxt;
	const EtlJob *job;
	Oid			role_oid;
	char	   *target;			/* quoted, schema-qualified */
	int			ncols;
	LoaderColumn *cols;
	bool		use_map;		/* column_map has jsonpaths: columns by path */
	int			nparams;		/* columns that take a parameter */
	MemoryContext param_cxt;	/* their values: the current partition's */
	Jsonb	   *parameters;		/* ... and the parameters they came from */
	bool		upsert;
	Oid			insert_relid;	/* where pages load: target or staging */
	EtlScanSpec *scan;			/* for page_scan.c, or NULL: jsonb only */
	int			scan_misses;	/* pages in a row the fast reader gave up on */
	char	   *final_target;	/* replace mode: the target swapped into */
	char	   *staging;		/* replace mode: where pages load, or NULL */
	EtlKeyResolver *keys;		/* record key -> column, for the jsonb path */
	EtlTargetInfo kind;			/* the job's target, as target_kind.c sees it */
	EtlPageTable *pages;		/* the run's page table (page_table.c), or NULL */
	/* upsert: pages of new keys COPY straight in (see insert_new_rows) */
	bool		new_rows_by_copy;	/* the target allows it */
	bool		merged;			/* a page has merged: the statement is valid */
	int			copy_backoff;	/* pages to merge after a COPY that failed */
	int			copy_skip;		/* of those, still to go */
	int64		run_id;
	PageRejects *rej;			/* NULL: a bad record fails the run */
	/* on_new_keys = add_columns: what adding a column must refresh */
	Oid			target_relid;	/* the job's target (not a staging table) */
};

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
 * A key resolver for the given names; malloc'd (the page reader's thread
 * may use it), freed with the loader's memory.
 */
static EtlKeyResolver *
resolver_of(EtlLoader *loader, int n, char **names)
{
	EtlKeyResolver *keys = etl_key_resolver_create(n, names);
	MemoryContextCallback *cb;

	if (keys == NULL)
		elog(ERROR, "etl_exec: out of memory");
	cb = MemoryContextAlloc(loader->cxt, sizeof(MemoryContextCallback));
	cb->func = free_key_resolver;
	cb->arg = keys;
	MemoryContextRegisterResetCallback(loader->cxt, cb);
	return keys;
}

/* A key resolver for the loader's columns. */
static EtlKeyResolver *
new_key_resolver(EtlLoader *loader)
{
	char	  **names = palloc(sizeof(char *) * Max(loader->ncols, 1));

	/* a column that takes a parameter takes no record key */
	for (int c = 0; c < loader->ncols; c++)
		names[c] = loader->cols[c].param_name ? NULL : loader->cols[c].name;
	return resolver_of(loader, loader->ncols, names);
}

/*
 * For on_new_keys: every column of the target by name, written by the run
 * or not (generated, identity, a parameter's), so that the page reader
 * calls new only a key no column names -- as new_keys_of_page does.
 */
static EtlKeyResolver *
table_key_resolver(EtlLoader *loader)
{
	Relation	rel = relation_open(loader->target_relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	char	  **names = palloc(sizeof(char *) * Max(desc->natts, 1));

	for (int i = 0; i < desc->natts; i++)
		names[i] = TupleDescAttr(desc, i)->attisdropped ? NULL :
			pstrdup(NameStr(TupleDescAttr(desc, i)->attname));
	relation_close(rel, AccessShareLock);
	return resolver_of(loader, desc->natts, names);
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
	/* the reader's own resolvers: it runs in the reader's thread */
	spec->keys = new_key_resolver(loader);
	if (etl_loader_watches_new_keys(loader))
		spec->table_keys = table_key_resolver(loader);
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
		char		category;
		bool		preferred;

		if (att->attisdropped || att->attgenerated || att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
			continue;
		col = &loader->cols[loader->ncols++];
		col->name = pstrdup(NameStr(att->attname));
		col->typid = att->atttypid;
		col->typmod = att->atttypmod;
		col->is_jsonb = att->atttypid == JSONBOID;
		col->is_json = getBaseType(att->atttypid) == JSONOID;
		get_type_category_preferred(att->atttypid, &category, &preferred);
		col->is_array = category == TYPCATEGORY_ARRAY;
		col->collation = att->attcollation;
		col->not_null = att->attnotnull;
		getTypeInputInfo(att->atttypid, &infunc, &col->ioparam);
		fmgr_info_cxt(infunc, &col->infunc, loader->cxt);
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

/*
 * The job's column_map: each column it names, with its path compiled or
 * the parameter it takes.
 */
static void
read_column_map(EtlLoader *loader, const EtlJob *job)
{
	JsonbIterator *it = JsonbIteratorInit(&job->column_map->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && key)
		{
			int			found = column_named(loader, key);
			LoaderColumn *col;

			if (found < 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("column_map of job %d names column \"%s\", which target table %s does not have (or cannot be written)",
								job->job_id, key, loader->target)));
			col = &loader->cols[found];
			col->param_name = etl_column_map_parameter(v.val.string.val, v.val.string.len);
			if (col->param_name)
			{
				loader->nparams++;
				continue;
			}
			col->mapped = loader->use_map = true;
			col->map_path = etl_path_compile(pnstrdup(v.val.string.val, v.val.string.len));
		}
	}
	if (loader->nparams > 0 && loader->param_cxt == NULL)
		loader->param_cxt = AllocSetContextCreate(loader->cxt, "etl_exec column parameters",
												  ALLOCSET_SMALL_SIZES);
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
 * Whether an upsert may try COPY first into this target (see
 * insert_new_rows), for the whole run: a plain table (COPY writes it;
 * row-level security is checked per page), where the merge would insert
 * exactly what COPY inserts -- its keys NOT NULL (DISTINCT ON keeps one
 * record of the NULL keys, COPY all of them), no rules (they refuse ON
 * CONFLICT; COPY ignores them) and no statement-level UPDATE trigger (the
 * merge fires it, COPY does not).
 */
static bool
copy_may_insert_new_rows(EtlLoader *loader, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trig = rel->trigdesc;

	if (!loader->upsert || loader->kind.kind != ETL_TARGET_PLAIN || rel->rd_rules != NULL ||
		(rel->rd_rel->relkind != RELKIND_RELATION &&
		 rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE) ||
		(trig && (trig->trig_update_before_statement || trig->trig_update_after_statement)))
		return false;
	for (int c = 0; c < loader->ncols; c++)
		if (loader->cols[c].is_key &&
			!TupleDescAttr(desc, attnameAttNum(rel, loader->cols[c].name, false) - 1)->attnotnull)
			return false;
	return true;
}

/*
 * The run's page table (page_table.c), through which pages go when COPY
 * must not write the target directly: upsert, row-level security, a table
 * another extension takes over.  Made when a page first needs it.
 */
static void
set_up_page_table(EtlLoader *loader, int64 run_id)
{
	EtlPageTableColumn *cols = palloc(sizeof(EtlPageTableColumn) * Max(loader->ncols, 1));

	for (int c = 0; c < loader->ncols; c++)
	{
		cols[c].name = loader->cols[c].name;
		cols[c].typid = loader->cols[c].typid;
		cols[c].typmod = loader->cols[c].typmod;
		cols[c].collation = loader->cols[c].collation;
		cols[c].is_key = loader->cols[c].is_key;
	}
	loader->pages = etl_page_table_new(loader->cxt, run_id, loader->role_oid, loader->target,
									   loader->kind.kind, loader->ncols, cols, loader->upsert);
}

/*
 * The run is over: drop its page table (if it has one), so that a worker
 * going on to other queued runs does not gather temporary tables.
 */
void
etl_loader_end(EtlLoader *loader)
{
	if (loader != NULL)
		etl_page_table_drop(loader->pages);
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
	loader->run_id = run_id;
	if (job->reject_bad_records)
		loader->rej = palloc0(sizeof(PageRejects));

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

	if (job->column_map)
		read_column_map(loader, job);
	mark_key_columns(loader, job);
	loader->keys = new_key_resolver(loader);

	loader->insert_relid = relid;
	loader->target_relid = relid;
	etl_target_kind(relid, &loader->kind);
	check_target_kind(loader, job);
	loader->new_rows_by_copy = copy_may_insert_new_rows(loader, rel);
	relation_close(rel, NoLock);
	if (strcmp(job->load_mode, "replace") == 0 && !dry_run)
		set_up_staging(loader, run_id, staging, has_loaded_pages);
	else if (!dry_run)
		set_up_page_table(loader, run_id);
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

/*
 * Convert a value with its column type's input function (domain checks
 * included), to find a value that does not fit; the result is not kept.
 */
static void
convert_value(EtlLoader *loader, int c, JsonbValue *v, ConvertPosition *pos)
{
	LoaderColumn *col = &loader->cols[c];
	char	   *text;

	if (v == NULL || v->type == jbvNull || col->is_jsonb)
		return;					/* (a JSON value always fits jsonb) */
	text = column_text(col, v);
	pos->column = col->name;
	pos->value = text;
	(void) InputFunctionCall(&col->infunc, text, col->ioparam, col->typmod);
	pos->column = NULL;
	pfree(text);
}

static void
parameter_error_context(void *arg)
{
	LoaderColumn *col = (LoaderColumn *) arg;

	if (col->param_value == NULL)
		errcontext("column_map {param:%s} for column \"%s\", value null",
				   col->param_name, col->name);
	else
		errcontext("column_map {param:%s} for column \"%s\", value \"%.200s\"",
				   col->param_name, col->name, col->param_value);
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

/* COPY ignores row-level security: with RLS on, pages go through INSERT */
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

/*
 * The columns a page mentions (present) must include some column, and for
 * upsert every key column.
 */
static void
check_page_columns(EtlLoader *loader, const bool *present, int32 page_index)
{
	bool		any = false;

	for (int c = 0; c < loader->ncols; c++)
		any |= present[c];
	if (!any)
		no_column_matches(loader, page_index);
	if (loader->upsert)
		for (int c = 0; c < loader->ncols; c++)
			if (loader->cols[c].is_key && !present[c])
				ereport(ERROR,
						(errcode(ERRCODE_NOT_NULL_VIOLATION),
						 errmsg("key column \"%s\" is missing from every record of page %d",
								loader->cols[c].name, page_index + 1),
						 errhint("An upsert needs the key in each record; check key_columns and column_map.")));
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

/*
 * A parameter's value must fit its column: a value the column refuses is
 * the run's error (or its partition's), not each record's -- with
 * on_bad_record = 'reject' it would reject every record -- so it fails
 * before any row takes it.  Converted as the run's role (domain checks
 * are user code), the result not kept.
 */
static void
check_parameter_value(EtlLoader *loader, LoaderColumn *col, RoleSwitch *sw)
{
	ErrorContextCallback errcb;

	if (col->param_value == NULL && col->not_null)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("column_map of job %d gives column \"%s\" the parameter \"%s\", which is null, and the column is NOT NULL",
						loader->job->job_id, col->name, col->param_name),
				 errhint("Give \"%s\" a value in the run's parameters (or its partitions).", col->param_name)));
	if (col->param_value != NULL && col->is_jsonb)
		return;					/* (a JSON value always fits jsonb) */
	/* (a null too: a domain's input function checks its NOT NULL) */
	errcb.callback = parameter_error_context;
	errcb.arg = col;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	act_as_run_role(loader, sw);
	(void) InputFunctionCall(&col->infunc, col->param_value, col->ioparam, col->typmod);
	back_from_run_role(sw);
	error_context_stack = errcb.previous;
}

/*
 * The parameters the pages to come were asked with (the run's, with their
 * partition's over them): the values of the columns column_map gives a
 * parameter, as COPY text, for every row of those pages.  A parameter the
 * run does not have is an error, before any row takes a NULL for it.
 */
void
etl_loader_use_parameters(EtlLoader *loader, Jsonb *parameters)
{
	MemoryContext old;
	RoleSwitch	sw;

	if (loader == NULL || loader->nparams == 0)
		return;
	MemoryContextReset(loader->param_cxt);
	old = MemoryContextSwitchTo(loader->param_cxt);
	/* (kept for refresh_columns) */
	loader->parameters = parameters ? DatumGetJsonbPCopy(JsonbPGetDatum(parameters)) : NULL;
	for (int c = 0; c < loader->ncols; c++)
	{
		LoaderColumn *col = &loader->cols[c];
		JsonbValue	buf;
		JsonbValue *v = NULL;
		StringInfoData text;

		if (col->param_name == NULL)
			continue;
		if (parameters != NULL && JB_ROOT_IS_OBJECT(parameters))
			v = getKeyJsonValueFromContainer(&parameters->root, col->param_name,
											 strlen(col->param_name), &buf);
		if (v == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column_map of job %d gives column \"%s\" the parameter \"%s\", which the run does not have",
							loader->job->job_id, col->name, col->param_name),
					 errhint("Pass \"%s\" in the run's parameters, or name a column of the job's partitions.",
							 col->param_name)));
		col->param_value = column_text(col, v);
		check_parameter_value(loader, col, &sw);
		initStringInfo(&text);
		if (col->param_value == NULL)
			appendStringInfoString(&text, "\\N");
		else
			etl_append_copy_text(&text, col->param_value, strlen(col->param_value));
		col->param_text = text.data;
	}
	MemoryContextSwitchTo(old);
}

/*
 * Before a commit: rows still waiting in the page table go into the
 * target, in the transaction that commits the checkpoint covering them.
 */
void
etl_loader_flush(EtlLoader *loader)
{
	RoleSwitch	sw;

	if (loader == NULL || !etl_page_table_pending(loader->pages))
		return;
	etl_cap_lock_waits();
	act_as_run_role(loader, &sw);
	check_constraints_in_page();
	etl_page_table_flush(loader->pages);
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
 * The run's role must be able to write the page's columns into the target
 * as the statement that loads them would -- INSERT them; for upsert also
 * SELECT the keys and, when the page updates columns, SELECT and UPDATE
 * those (what INSERT ... ON CONFLICT DO UPDATE needs) -- checked as the
 * executor would, before COPY takes the rows for it: COPY itself checks
 * no privileges.
 */
static void
check_target_privileges(EtlLoader *loader, const bool *present)
{
	Relation	rel = table_open(loader->insert_relid, AccessShareLock);
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
															   NULL, false, false);
	Bitmapset  *inserted = NULL;
	Bitmapset  *updated = NULL;
	Bitmapset  *selected = NULL;
	AclMode		perms = ACL_INSERT;

	for (int c = 0; c < loader->ncols; c++)
	{
		int			att;

		if (!present[c])
			continue;
		att = attnameAttNum(rel, loader->cols[c].name, false) - FirstLowInvalidHeapAttributeNumber;
		inserted = bms_add_member(inserted, att);
		if (!loader->upsert)
			continue;
		selected = bms_add_member(selected, att);
		if (!loader->cols[c].is_key)
			updated = bms_add_member(updated, att);
	}
	if (loader->upsert)
		perms |= ACL_SELECT | (updated ? ACL_UPDATE : 0);
	etl_check_permissions(pstate, nsitem, perms, inserted, updated, selected);
	table_close(rel, NoLock);
}

/*
 * The columns present, by name: the columns a page's COPY text carries --
 * in column order, and those that take a parameter last (see
 * append_parameters).
 */
static List *
copy_columns(EtlLoader *loader, const bool *present)
{
	List	   *attnames = NIL;

	for (int c = 0; c < loader->ncols; c++)
		if (present[c] && loader->cols[c].param_name == NULL)
			attnames = lappend(attnames, makeString(loader->cols[c].name));
	for (int c = 0; c < loader->ncols; c++)
		if (present[c] && loader->cols[c].param_name != NULL)
			attnames = lappend(attnames, makeString(loader->cols[c].name));
	return attnames;
}

/*
 * Begin reading a page's COPY text (the present columns: copy_columns)
 * for the table rel (opened with lockmode), as COPY FROM does.
 */
static CopyFromState
begin_copy(EtlLoader *loader, Relation rel, LOCKMODE lockmode, const char *text, int len,
		   const bool *present)
{
	ParseState *pstate = make_parsestate(NULL);

	copy_source.data = text;
	copy_source.len = len;
	copy_source.pos = 0;
	/* COPY's executor state takes the relation from the range table */
	(void) addRangeTableEntryForRelation(pstate, rel, lockmode, NULL, false, false);
	return BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_read_page,
						 copy_columns(loader, present),
						 list_make1(makeDefElem("encoding",
												(Node *) makeString((char *) GetDatabaseEncodingName()), -1)));
}

/*
 * COPY a page's rendered rows into the table relid.  Returns the rows
 * copied; a value that does not fit names its page, record, column and
 * value.
 */
static uint64
copy_into(EtlLoader *loader, Oid relid, const char *text, int len, const bool *present,
		  int32 page_index)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	CopyFromState cstate = begin_copy(loader, rel, RowExclusiveLock, text, len, present);
	MemoryContext cxt = CurrentMemoryContext;
	uint64		copied = 0;

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
	return copied;
}

/*
 * Read a page's rendered rows into rows of the page table's type, with
 * COPY's own parser (NextCopyFrom: the column types' input functions, a
 * value that does not fit naming its page, record, column and value), as
 * one array: the page as the statement that writes it takes it.
 */
static Datum
read_rows(EtlLoader *loader, Oid relid, const char *text, int len, const bool *present,
		  int32 page_index, int *nrows)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	CopyFromState cstate = begin_copy(loader, rel, AccessShareLock, text, len, present);
	ExprContext *econtext = CreateStandaloneExprContext();
	MemoryContext cxt = CurrentMemoryContext;
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	int			cap = 1024;
	Datum	   *rows = palloc(sizeof(Datum) * cap);
	ErrorContextCallback errcb;
	Datum		array;

	*nrows = 0;
	errcb.callback = CopyFromErrorCallback;
	errcb.arg = cstate;
	errcb.previous = error_context_stack;
	PG_TRY();
	{
		error_context_stack = &errcb;
		for (;;)
		{
			bool		more;

			MemoryContextReset(econtext->ecxt_per_tuple_memory);
			MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
			more = NextCopyFrom(cstate, econtext, values, nulls);
			MemoryContextSwitchTo(cxt);
			if (!more)
				break;
			if (*nrows == cap)
				rows = repalloc(rows, sizeof(Datum) * (cap *= 2));
			rows[(*nrows)++] = HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
		}
		error_context_stack = errcb.previous;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		error_context_stack = errcb.previous;
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		name_copy_position(edata, page_index);
		ReThrowError(edata);
	}
	PG_END_TRY();
	EndCopyFrom(cstate);
	FreeExprContext(econtext, true);
	array = PointerGetDatum(construct_array(rows, *nrows, desc->tdtypeid, -1, false, TYPALIGN_DOUBLE));
	table_close(rel, NoLock);
	return array;
}

/*
 * How a page's rows go into their table (copy_rows): COPY into the target
 * (or staging table), a statement through the page table (upsert, RLS),
 * or COPY into the page table, to be moved later (a table another
 * extension takes over).
 */
typedef enum PageWay
{
	PAGE_COPY,
	PAGE_STATEMENT,
	PAGE_GATHER
} PageWay;

/* Some of a page's lines (or all), and how they go in. */
typedef struct PageLines
{
	PageWay		way;
	Oid			relid;
	bool		rls;
	const char *text;			/* COPY text: one line per record */
	int			len;
	const bool *present;
	int32		page_index;
	uint64		copied;			/* out: the rows COPY took */
} PageLines;

/* COPY lines (a PageLines *) into their table. */
static void
copy_lines(EtlLoader *loader, void *arg)
{
	PageLines  *p = (PageLines *) arg;

	p->copied = copy_into(loader, p->relid, p->text, p->len, p->present, p->page_index);
}

typedef void (*SubxactFn) (EtlLoader *loader, void *arg);

/*
 * Run fn in a subtransaction of its own: NULL when it went through, else
 * its error, rolled back -- when taken(its SQLSTATE) says the caller takes
 * it (and goes on another way); any other error is raised again.
 */
static ErrorData *
try_in_subtransaction(EtlLoader *loader, SubxactFn fn, void *arg, bool (*taken) (int sqlerrcode))
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile failure = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(loader, arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (!taken(edata->sqlerrcode))
			ReThrowError(edata);
		failure = edata;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return failure;
}

/*
 * An upsert's page whose keys are all new needs no merge: it is exactly
 * the rows INSERT ... ON CONFLICT would insert, and COPY inserts them with
 * multi-inserts, at append speed, where the upsert's INSERT goes row by
 * row through speculative insertion.  So when the target allows it, a
 * page first goes straight in with COPY, in a subtransaction of its own;
 * if that fails -- a key already there (or twice in the page) is a unique
 * violation, and any other data or constraint error may be one the merge
 * would not raise (a row that updates keeps its columns) -- it is rolled
 * back, and the page merges as usual, which decides.  Errors of a cancel,
 * a shutdown, a lock timeout or the server's resources stop the page.
 *
 * After a failure the next pages merge without trying (1, 2, 4, ... up to
 * 64 pages): an incremental load, whose keys are mostly there, tries
 * seldom.  The first page always merges: a statement the target cannot
 * take (no unique index on the keys, rules) fails as it would.
 */
#define ETL_COPY_BACKOFF_MAX 64

static bool
error_stops_page(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_INTERNAL_ERROR:
			return true;
		default:
			return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
	}
}


/* An error after which the merge decides (see above): not one that stops the page. */
static bool
merge_decides(int sqlerrcode)
{
	return !error_stops_page(sqlerrcode);
}

/* COPY an upsert's page straight into the target: true when it went in. */
static bool
insert_new_rows(EtlLoader *loader, const char *text, int len, const bool *present,
				int32 page_index)
{
	PageLines	lines = {PAGE_COPY, loader->insert_relid, false, text, len, present, page_index, 0};
	ErrorData  *failure = try_in_subtransaction(loader, copy_lines, &lines, merge_decides);

	if (failure == NULL)
	{
		loader->copy_backoff = 0;
		return true;
	}
	FreeErrorData(failure);
	loader->copy_backoff = Min(Max(loader->copy_backoff * 2, 1), ETL_COPY_BACKOFF_MAX);
	loader->copy_skip = loader->copy_backoff;
	return false;
}

/* Whether this upsert page tries COPY first (see above). */
static bool
try_copy_first(EtlLoader *loader, bool rls)
{
	if (!loader->new_rows_by_copy || !loader->merged || rls)
		return false;
	if (loader->copy_skip > 0)
	{
		loader->copy_skip--;
		return false;
	}
	return true;
}

/* ---------- rejected records ---------- */

/* Write lines (a PageLines *) the page's way. */
static void
write_lines(EtlLoader *loader, void *arg)
{
	PageLines  *p = (PageLines *) arg;

	if (p->way != PAGE_STATEMENT)
		copy_lines(loader, p);
	else if (!(loader->upsert && !(loader->rej && loader->rej->redoing) &&
			   try_copy_first(loader, p->rls) &&
			   insert_new_rows(loader, p->text, p->len, p->present, p->page_index)))
	{
		int			nrows;
		Datum		rows = read_rows(loader, p->relid, p->text, p->len, p->present,
									 p->page_index, &nrows);

		etl_page_table_write_rows(loader->pages, rows, nrows, p->present, p->page_index);
		loader->merged |= loader->upsert;
	}
}

/*
 * With on_bad_record = 'reject' a page goes the same way as without, in
 * one subtransaction more: a clean page costs that and nothing else.  A
 * page that fails with a record's own error (a value its column refuses,
 * a constraint: rejects.c) is rolled back and redone by halves, each in a
 * subtransaction of its own, down to the single records that fail: those
 * are rejected, with their own exact error, and everything else loads
 * (in page order).  k bad records among a page's n cost about 2k log2(n)
 * subtransactions.  Any other error fails the page as before.
 *
 * The rejects are written to dw_etl_rejects, with the records as the API
 * sent them, in the page's transaction, as the worker: they commit with
 * the page and its checkpoint or not at all, so a resume -- which redoes
 * an uncommitted page from scratch -- never rejects a record twice.
 */

/*
 * Reject record `record` (0-based) of the page for failure -- unless that
 * takes the run past the job's max_rejected: then the run fails, and the
 * page with it (its checkpoint stays the one before).
 */
static void
reject_record(EtlLoader *loader, int32 page_index, int record, ErrorData *failure)
{
	PageRejects *rej = loader->rej;
	int64		before = rej->run_rejected + list_length(rej->rejects);

	if (loader->job->max_rejected >= 0 && before >= loader->job->max_rejected)
		ereport(ERROR,
				(errcode(failure->sqlerrcode),
				 errmsg("etl_exec run " INT64_FORMAT " has rejected " INT64_FORMAT " records, as many as job %d's max_rejected (%d) allows, and record %d of page %d is refused too",
						loader->run_id, before, loader->job->job_id, loader->job->max_rejected,
						record + 1, page_index + 1),
				 errdetail("The record was refused with: %s", failure->message),
				 errhint("Raise the job's max_rejected (NULL: no limit), or fix the source or the target table; then resume the run.")));
	rej->rejects = lappend(rej->rejects, etl_rejected_record(failure, record));
}

/*
 * Redo lines [from, to) of a page (line starts in starts[]), whose failure
 * is known when given: by halves, down to the records that fail.  Returns
 * the rows COPY took.
 */
static uint64
redo_lines(EtlLoader *loader, const PageLines *page, const int *starts, int from, int to,
		   ErrorData *failure)
{
	int			mid;

	if (failure == NULL)
	{
		PageLines	part = *page;

		part.text = page->text + starts[from];
		part.len = starts[to] - starts[from];
		if ((failure = try_in_subtransaction(loader, write_lines, &part, etl_error_rejects_record)) == NULL)
			return part.copied;
	}
	if (to - from == 1)
	{
		reject_record(loader, page->page_index, from, failure);
		return 0;
	}
	mid = from + (to - from) / 2;
	return redo_lines(loader, page, starts, from, mid, NULL) +
		redo_lines(loader, page, starts, mid, to, NULL);
}

/* Write a page, rejecting the records that fail (above). */
static void
write_or_reject(EtlLoader *loader, PageLines *page)
{
	ErrorData  *failure = try_in_subtransaction(loader, write_lines, page, etl_error_rejects_record);
	int		   *starts;
	int			n = 0;

	if (failure == NULL)
		return;
	/* COPY text escapes newlines in values: a line is a record */
	for (int i = 0; i < page->len; i++)
		n += page->text[i] == '\n';
	starts = palloc(sizeof(int) * (n + 2));
	n = 0;
	starts[0] = 0;
	for (int i = 0; i < page->len; i++)
		if (page->text[i] == '\n')
			starts[++n] = i + 1;
	if (starts[n] < page->len)
		starts[++n] = page->len;
	loader->rej->redoing = true;
	page->copied = redo_lines(loader, page, starts, 0, n, failure);
	loader->rej->redoing = false;
}

/*
 * The records of the page being loaded, as the API sent them: parsed from
 * its body (the one-pass reader keeps only COPY text) when the loader did
 * not get them parsed.
 */
static JsonbValue *
page_records(EtlLoader *loader, int32 page_index, int *nrec)
{
	PageRejects *rej = loader->rej;
	const EtlJob *job = loader->job;
	Jsonb	   *body;
	JsonbValue	doc;

	if (rej->records != NULL)
	{
		*nrec = rej->nrec;
		return rej->records;
	}
	if (rej->body == NULL)
		elog(ERROR, "etl_exec: the body of page %d is not at hand for its rejected records",
			 page_index + 1);
	if (job->format != ETL_FORMAT_JSON)
		*nrec = etl_page_records(job, rej->body, rej->len, page_index,
								 etl_url_redact(rej->url), true, &rej->records);
	else
	{
		body = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(rej->body)));
		etl_jsonb_as_value(body, &doc);
		*nrec = etl_path_query(job->records, &doc, &rej->records);
	}
	rej->nrec = *nrec;
	return rej->records;
}

/* The page's rejects into dw_etl_rejects (as the worker, in the page's transaction). */
static void
store_page_rejects(EtlLoader *loader, int32 page_index)
{
	JsonbValue *records;
	int			nrec;

	if (loader->rej->rejects == NIL)
		return;
	records = page_records(loader, page_index, &nrec);
	etl_store_rejects(loader->run_id, loader->job->job_id, loader->rej->partition_index,
					  page_index, loader->rej->rejects, records, nrec);
}

/*
 * A page is about to load (or a dry run to check it): what rejecting its
 * records takes -- the run's rejects so far (max_rejected), its partition,
 * its body (parsed for its records only if some are rejected).  The body
 * must stay as it is until the page is loaded.
 */
void
etl_loader_begin_page(EtlLoader *loader, const EtlCheckpoint *cp, const char *body, size_t len,
					  const char *url)
{
	PageRejects *rej = loader ? loader->rej : NULL;

	if (rej == NULL)
		return;					/* (a sample run has no loader) */
	rej->run_rejected = cp->rejected;
	rej->partition_index = cp->partition_index;
	rej->body = body;
	rej->len = len;
	rej->url = url;
	rej->records = NULL;
	rej->nrec = 0;
	rej->rejects = NIL;
	rej->redoing = false;
}

/* How many records of the page just loaded (or checked) were rejected. */
int
etl_loader_page_rejected(EtlLoader *loader)
{
	return loader->rej ? list_length(loader->rej->rejects) : 0;
}

/* A dry run's rejects as JSON members (rejects.c), or NULL without on_bad_record = 'reject'. */
char *
etl_loader_describe_rejects(EtlLoader *loader)
{
	return loader->rej ? etl_describe_rejects(loader->rej->rejects) : NULL;
}

/*
 * The columns that take a parameter, added to each row of a page's COPY
 * text (after the record's columns, where copy_columns puts them), and to
 * the columns present.  The text is the page's, one row a line.
 */
static void
append_parameters(EtlLoader *loader, const char **text, int *len, const bool **present)
{
	bool	   *with = palloc(sizeof(bool) * loader->ncols);
	bool		any_record_column = false;
	StringInfoData params;
	StringInfoData out;
	const char *p = *text;
	const char *end = *text + *len;

	initStringInfo(&params);
	for (int c = 0; c < loader->ncols; c++)
	{
		LoaderColumn *col = &loader->cols[c];

		with[c] = (*present)[c] || col->param_name != NULL;
		if (col->param_name == NULL)
		{
			any_record_column |= (*present)[c];
			continue;
		}
		if (col->param_text == NULL)
			elog(ERROR, "etl_exec: no parameters given for column \"%s\"", col->name);
		if (params.len > 0)
			appendStringInfoChar(&params, '\t');
		appendStringInfoString(&params, col->param_text);
	}

	initStringInfo(&out);
	enlargeStringInfo(&out, *len + params.len + 2);
	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		int			n = nl ? nl - p : end - p;

		appendBinaryStringInfo(&out, p, n);
		if (any_record_column)
			appendStringInfoChar(&out, '\t');
		appendBinaryStringInfo(&out, params.data, params.len);
		appendStringInfoChar(&out, '\n');
		p += n + 1;
	}
	*text = out.data;
	*len = out.len;
	*present = with;
}

/*
 * Load a page rendered as COPY text (the columns present: copy_columns),
 * as the run's role, after checking that role's privileges on
 * those columns, as the statement that writes them would.
 *
 * A page for a plain table (or a replace run's staging table) goes
 * straight in with COPY.  Any other goes through the run's page table
 * (page_table.c) and from there into the target with INSERT ... SELECT:
 * an upsert's page (merged at once, unless its keys are all new: above),
 * a page for a table with row-level security (moved at once: COPY would
 * bypass the policies), and a page for a table another extension takes
 * over (gathered, moved in large statements).
 */
static void
copy_rows(EtlLoader *loader, const char *text, int len, const bool *present, int32 page_index)
{
	bool		rls = loader->pages != NULL && rls_enabled(loader);
	bool		write_now = loader->upsert || rls;
	Oid			relid = loader->insert_relid;
	RoleSwitch	sw;
	PageLines	lines;

	Assert(loader->pages != NULL || !loader->upsert);	/* (dry runs write nothing) */
	if (loader->nparams > 0)
		append_parameters(loader, &text, &len, &present);
	check_page_columns(loader, present, page_index);
	if (loader->pages != NULL && (write_now || loader->kind.kind != ETL_TARGET_PLAIN))
		relid = etl_page_table_open(loader->pages); /* as the worker */
	/* a load blocked on a lock must not carry the run past its deadline */
	etl_cap_lock_waits();
	act_as_run_role(loader, &sw);
	check_constraints_in_page();
	check_target_privileges(loader, present);
	lines.way = relid == loader->insert_relid ? PAGE_COPY : write_now ? PAGE_STATEMENT : PAGE_GATHER;
	lines.relid = relid;
	lines.rls = rls;
	lines.text = text;
	lines.len = len;
	lines.present = present;
	lines.page_index = page_index;
	lines.copied = 0;
	if (lines.way == PAGE_GATHER)
		etl_page_table_before_copy(loader->pages, present);
	if (loader->rej)
		write_or_reject(loader, &lines);
	else
		write_lines(loader, &lines);
	if (lines.way == PAGE_GATHER)
		etl_page_table_after_copy(loader->pages, lines.copied, len, page_index);
	back_from_run_role(&sw);
	if (loader->rej)
		store_page_rejects(loader, page_index);
}

/*
 * Load a page parsed as jsonb: collect each record's values by column,
 * render the columns the page mentions as COPY text, and load that.
 */
static int
load_page_copy(EtlLoader *loader, JsonbValue *records, int nrec, int32 page_index)
{
	int			ncols = loader->ncols;
	JsonbValue *slots = palloc0(sizeof(JsonbValue) * nrec * ncols);	/* jbvNull is 0 */
	bool	   *present = palloc0(sizeof(bool) * ncols);
	StringInfoData text;

	collect_records(loader, records, nrec, page_index, slots, present);
	if (loader->rej)
	{
		loader->rej->records = records;
		loader->rej->nrec = nrec;
	}
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

/* A dry run's records [from, to), with their values by column. */
typedef struct PageValues
{
	JsonbValue *slots;
	const bool *present;
	int			from;
	int			to;
	ConvertPosition *pos;
} PageValues;

/* Convert the values of records (a PageValues *), column by column. */
static void
convert_records(EtlLoader *loader, void *arg)
{
	PageValues *v = (PageValues *) arg;
	int			ncols = loader->ncols;

	for (int c = 0; c < ncols; c++)
		for (int r = v->from; v->present[c] && r < v->to; r++)
		{
			v->pos->record = r;
			convert_value(loader, c, &v->slots[r * ncols + c], v->pos);
		}
}

/*
 * A dry run's page: convert its values with the column types' input
 * functions (as the run's role: domain checks are user code), so that a
 * value that does not fit fails with its page, record, column and value,
 * and write nothing.  With on_bad_record = 'reject' such records are
 * counted as rejected instead (for the dry run's report), record by
 * record once the page fails.
 */
static void
check_page_values(EtlLoader *loader, JsonbValue *records, int nrec, int32 page_index)
{
	int			ncols = loader->ncols;
	JsonbValue *slots = palloc0(sizeof(JsonbValue) * nrec * ncols);	/* jbvNull is 0 */
	bool	   *present = palloc0(sizeof(bool) * ncols);
	ConvertPosition pos = {0};
	ErrorContextCallback errcb;
	RoleSwitch	sw;
	PageValues	values = {slots, present, 0, nrec, &pos};

	collect_records(loader, records, nrec, page_index, slots, present);
	etl_cap_lock_waits();
	act_as_run_role(loader, &sw);
	pos.page_index = page_index;
	errcb.callback = convert_error_context;
	errcb.arg = &pos;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	if (loader->rej == NULL)
		convert_records(loader, &values);
	else if (try_in_subtransaction(loader, convert_records, &values, etl_error_rejects_record) != NULL)
		for (int r = 0; r < nrec; r++)
		{
			ErrorData  *failure;

			values.from = r;
			values.to = r + 1;
			if ((failure = try_in_subtransaction(loader, convert_records, &values, etl_error_rejects_record)) != NULL)
				loader->rej->rejects = lappend(loader->rej->rejects,
											   etl_rejected_record(failure, r));
			pos.column = NULL;
		}
	error_context_stack = errcb.previous;
	/* (parameter values were checked when the loader took them) */
	for (int c = 0; c < ncols; c++)
		present[c] |= loader->cols[c].param_name != NULL;
	check_page_columns(loader, present, page_index);
	back_from_run_role(&sw);
}

/* ---------- keys no column takes: on_new_keys ---------- */

/*
 * Whether the job does something about record keys no column takes: it
 * maps keys by name, and its on_new_keys is not ignore.  The page reader
 * only says that a page has such keys; the jsonb path (below) decides.
 */
bool
etl_loader_watches_new_keys(EtlLoader *loader)
{
	return loader != NULL && !loader->use_map && loader->job->on_new_keys != ETL_NEW_KEYS_IGNORE;
}

/* whether the target has a column (writable or not) a key names, case aside */
static bool
target_has_column(TupleDesc desc, const char *key)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			pg_strcasecmp(NameStr(TupleDescAttr(desc, i)->attname), key) == 0)
			return true;
	return false;
}

static int
compare_strings(const ListCell *a, const ListCell *b)
{
	return strcmp((const char *) lfirst(a), (const char *) lfirst(b));
}

/* The keys of a page's records that no column of the target has, sorted. */
static List *
new_keys_of_page(EtlLoader *loader, JsonbValue *records, int nrec)
{
	List	   *keys = NIL;
	Relation	rel = relation_open(loader->target_relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);

	for (int r = 0; r < nrec; r++)
	{
		JsonbIterator *it;
		JsonbValue	kv;
		JsonbIteratorToken tok;
		int			position = 0;

		if (records[r].type != jbvBinary || !JsonContainerIsObject(records[r].val.binary.data))
			continue;			/* (collect_records says what is wrong) */
		it = JsonbIteratorInit(records[r].val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &kv, true)) != WJB_DONE)
		{
			char	   *key;
			ListCell   *lc;
			bool		known = false;

			if (tok != WJB_KEY ||
				key_column(loader, position++, kv.val.string.val, kv.val.string.len) >= 0)
				continue;
			key = pnstrdup(kv.val.string.val, kv.val.string.len);
			foreach(lc, keys)
				known |= strcmp((char *) lfirst(lc), key) == 0;
			if (!known && !target_has_column(desc, key))
				keys = lappend(keys, key);
		}
	}
	relation_close(rel, AccessShareLock);
	list_sort(keys, compare_strings);
	return keys;
}

static char *
key_list_text(List *keys)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, keys)
		appendStringInfo(&buf, "%s\"%s\"", buf.len ? ", " : "", (char *) lfirst(lc));
	return buf.data;
}

/* The type for each new key, from its values on this page (type_infer.c). */
static EtlInference *
infer_new_keys(List *keys, JsonbValue *records, int nrec)
{
	EtlInference *inf = etl_infer_create(CurrentMemoryContext, false);
	ListCell   *lc;

	/* first the keys in order, so that key i of the inference is key i */
	foreach(lc, keys)
	{
		JsonbValue	null = {.type = jbvNull};

		etl_infer_value(inf, (char *) lfirst(lc), strlen((char *) lfirst(lc)), &null);
	}
	for (int r = 0; r < nrec; r++)
	{
		JsonbIterator *it;
		JsonbValue	kv;
		JsonbIteratorToken tok;
		char	   *key = NULL;

		if (records[r].type != jbvBinary || !JsonContainerIsObject(records[r].val.binary.data))
			continue;
		it = JsonbIteratorInit(records[r].val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &kv, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				key = pnstrdup(kv.val.string.val, kv.val.string.len);
			else if (tok == WJB_VALUE)
			{
				ListCell   *lc2;

				foreach(lc2, keys)
					if (strcmp((char *) lfirst(lc2), key) == 0)
						etl_infer_value(inf, key, strlen(key), &kv);
			}
		}
	}
	return inf;
}

/*
 * The target's columns changed (a column added): read them again, with
 * everything made from them -- key resolver, the page reader's spec, the
 * page table (its pending rows written first).
 */
static void
refresh_columns(EtlLoader *loader)
{
	MemoryContext old = MemoryContextSwitchTo(loader->cxt);
	Relation	rel = relation_open(loader->target_relid, AccessShareLock);

	loader->ncols = 0;
	read_columns(loader, rel);
	if (loader->job->column_map)
	{
		/* ({param:NAME} entries only: on_new_keys needs mapping by name) */
		Jsonb	   *parameters = loader->parameters ?
			DatumGetJsonbPCopy(JsonbPGetDatum(loader->parameters)) : NULL;

		loader->nparams = 0;
		read_column_map(loader, loader->job);
		etl_loader_use_parameters(loader, parameters);
	}
	mark_key_columns(loader, loader->job);
	loader->keys = new_key_resolver(loader);
	loader->new_rows_by_copy = copy_may_insert_new_rows(loader, rel);
	relation_close(rel, NoLock);
	/* (the old spec stays: a page scanned with it is read again as jsonb) */
	if (loader->scan)
		loader->scan = build_scan_spec(loader, loader->job);
	if (loader->pages)
	{
		etl_page_table_drop(loader->pages);
		set_up_page_table(loader, loader->run_id);
	}
	MemoryContextSwitchTo(old);
}

/*
 * A column for each new key, of the type its values on this page call for,
 * added by the run's role (which must own the table) in the page's
 * transaction, and recorded in run_context.added_columns.
 */
static void
add_key_columns(EtlLoader *loader, List *keys, JsonbValue *records, int nrec, int32 page_index)
{
	EtlInference *inf = infer_new_keys(keys, records, nrec);
	const char *table = loader->final_target ? loader->final_target : loader->target;
	RoleSwitch	sw;

	for (int i = 0; i < etl_infer_nkeys(inf); i++)
	{
		const char *key = etl_infer_key(inf, i);

		if (!etl_owns_relation(loader->target_relid, loader->role_oid))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cannot add a column for new key \"%s\" to %s: role \"%s\" does not own the table",
							key, table, GetUserNameFromId(loader->role_oid, false)),
					 errdetail("Page %d carries the key, and the job's on_new_keys is add_columns; only a table's owner may add columns to it.",
							   page_index + 1),
					 errhint("Let the table's owner run the job, add the column yourself, or set the job's on_new_keys to ignore or fail.")));
		if (strlen(key) >= NAMEDATALEN)
			ereport(ERROR,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("cannot add a column for new key \"%s\" to %s: the key is longer than a column name can be",
							key, table),
					 errhint("Add a column for it yourself and map it with the job's column_map.")));
		if (key[0] == '\0' || SystemAttributeByName(key) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_NAME),
					 errmsg("cannot add a column for new key \"%s\" to %s: %s",
							key, table, key[0] ? "it is the name of a system column" : "a column name cannot be empty"),
					 errdetail("Page %d carries the key, and the job's on_new_keys is add_columns.", page_index + 1),
					 errhint("Set the job's on_new_keys to ignore, and take the key with a column of another name through the job's column_map.")));
	}
	etl_loader_flush(loader);	/* rows of the columns before (as the run's role) */
	etl_cap_lock_waits();
	SPI_connect();
	act_as_run_role(loader, &sw);
	for (int i = 0; i < etl_infer_nkeys(inf); i++)
	{
		const char *column = quote_identifier(etl_infer_key(inf, i));

		if (SPI_execute(psprintf("ALTER TABLE %s ADD COLUMN %s %s", table, column,
								 etl_infer_type(inf, i)), false, 0) != SPI_OK_UTILITY ||
			(loader->staging &&
			 SPI_execute(psprintf("ALTER TABLE %s ADD COLUMN %s %s", loader->staging, column,
								  etl_infer_type(inf, i)), false, 0) != SPI_OK_UTILITY))
			elog(ERROR, "etl_exec: could not add column %s to %s", column, table);
	}
	back_from_run_role(&sw);
	SPI_finish();
	for (int i = 0; i < etl_infer_nkeys(inf); i++)
	{
		ereport(LOG,
				(errmsg("etl_exec run " INT64_FORMAT ": added column \"%s\" %s to %s for a new key on page %d",
						loader->run_id, etl_infer_key(inf, i), etl_infer_type(inf, i), table,
						page_index + 1)));
		etl_record_added_column(loader->run_id, etl_infer_key(inf, i), etl_infer_type(inf, i),
								page_index);
	}
	refresh_columns(loader);
}

/*
 * Keys of the page no column takes, when the job watches for them: fail
 * the run naming them, or add their columns before the page loads.
 */
static void
follow_new_keys(EtlLoader *loader, JsonbValue *records, int nrec, int32 page_index)
{
	List	   *keys;

	if (!etl_loader_watches_new_keys(loader))
		return;
	keys = new_keys_of_page(loader, records, nrec);
	if (keys == NIL)
		return;
	if (loader->job->on_new_keys == ETL_NEW_KEYS_FAIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("page %d has record keys that no column of %s takes: %s",
						page_index + 1, loader->target, key_list_text(keys)),
				 errdetail("The job's on_new_keys is fail; the pages before this one are loaded and checkpointed."),
				 errhint("Add the columns to the table (or set the job's on_new_keys to add_columns or ignore), then resume the run.")));
	add_key_columns(loader, keys, records, nrec, page_index);
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
	if (nrec == 0)
		return 0;
	if (dry_run)
		check_page_values(loader, records, nrec, page_index);
	else
	{
		follow_new_keys(loader, records, nrec, page_index);
		load_page_copy(loader, records, nrec, page_index);
	}
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
	for (int c = 0; c < loader->ncols; c++)
		if (loader->cols[c].param_name)
		{
			if (!first)
				appendStringInfoChar(&buf, ',');
			escape_json(&buf, loader->cols[c].name);
			appendStringInfoChar(&buf, ':');
			escape_json(&buf, psprintf("{param:%s}", loader->cols[c].param_name));
			first = false;
		}
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
 * parsed as jsonb (a shape it does not handle).
 */
const EtlScanSpec *
etl_loader_scan_spec(EtlLoader *loader)
{
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
	if (result->nrec == 0)
		return;
	copy_rows(loader, result->copy_text, result->copy_len, result->present, page_index);
}
