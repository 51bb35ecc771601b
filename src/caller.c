/*-------------------------------------------------------------------------
 *
 * caller.c
 *	  Who called an entry point, and acting as them.
 *
 * An entry point (api.c) runs its SECURITY DEFINER implementation on
 * behalf of its caller: current_user at the call, even a role reached by
 * SET ROLE, and the caller's search_path, kept here for as long as the
 * outermost entry point runs.  What the caller's own rights must decide --
 * which table a job's target name means -- runs as the caller, with the
 * caller's search_path, in a restricted operation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "compat.h"
#include "etl_exec.h"

/* the caller of the entry point being run, and its search_path */
static Oid	api_caller = InvalidOid;
static char *api_caller_search_path = NULL;

/* The role on whose behalf the current entry point runs. */
Oid
etl_api_caller(void)
{
	return OidIsValid(api_caller) ? api_caller : GetUserId();
}

/* Call impl with the entry point's arguments, as the caller's agent. */
Datum
etl_call_for_caller(FunctionCallInfo fcinfo, FmgrInfo *impl, bool *isnull)
{
	LOCAL_FCINFO(inner, FUNC_MAX_ARGS);
	Oid			saved_caller = api_caller;
	char	   *saved_path = api_caller_search_path;
	Datum		result;

	InitFunctionCallInfoData(*inner, impl, fcinfo->nargs, fcinfo->fncollation, NULL, NULL);
	for (int i = 0; i < fcinfo->nargs; i++)
		inner->args[i] = fcinfo->args[i];

	/*
	 * The implementations never call an entry point; one reached some other
	 * way (a SECURITY DEFINER function of someone's) acts for its own caller.
	 */
	api_caller = GetUserId();
	api_caller_search_path = pstrdup(GetConfigOption("search_path", false, false));
	PG_TRY();
	{
		result = FunctionCallInvoke(inner);
	}
	PG_FINALLY();
	{
		api_caller = saved_caller;
		api_caller_search_path = saved_path;
	}
	PG_END_TRY();
	*isnull = inner->isnull;
	return result;
}

/*
 * Act as the caller, with the caller's search_path, in a restricted
 * operation: for what the caller's own rights must decide.  Undone by
 * etl_leave_caller_context(), or by the (sub)transaction's abort on error.
 */
void
etl_enter_caller_context(EtlCallerContext *cc)
{
	GetUserIdAndSecContext(&cc->userid, &cc->sec_context);
	cc->made_read_only = false;
	cc->nestlevel = NewGUCNestLevel();
	if (api_caller_search_path)
		(void) set_config_option("search_path", api_caller_search_path,
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	SetUserIdAndSecContext(etl_api_caller(),
						   cc->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

/*
 * Act as the caller as above, in a read-only transaction besides: for the
 * caller's own query text (a job's partitions query), which may read what
 * the caller may read and change nothing.  etl_leave_caller_context()
 * restores the transaction's read-write state with the rest.
 */
void
etl_enter_caller_context_read_only(EtlCallerContext *cc)
{
	etl_enter_caller_context(cc);

	/*
	 * As SET TRANSACTION READ ONLY does (the setting itself cannot be saved
	 * and restored by a function from PostgreSQL 16 on).  An error undoes
	 * it with the subtransaction it aborts, or the transaction.
	 */
	cc->was_read_only = XactReadOnly;
	cc->made_read_only = true;
	XactReadOnly = true;
}

void
etl_leave_caller_context(EtlCallerContext *cc)
{
	if (cc->made_read_only)
		XactReadOnly = cc->was_read_only;
	SetUserIdAndSecContext(cc->userid, cc->sec_context);
	/* false: a SET the caller's code made stays with it, as VACUUM does */
	AtEOXact_GUC(false, cc->nestlevel);
}

/*
 * The table a (possibly unqualified) name means to the caller, quoted and
 * schema-qualified; NULL when there is none.
 */
char *
etl_resolve_target(const char *name)
{
	EtlCallerContext cc;
	RangeVar   *rv;
	Oid			relid;
	char	   *result = NULL;

	etl_enter_caller_context(&cc);
	rv = makeRangeVarFromNameList(etl_qualified_name_list(name));
	relid = RangeVarGetRelid(rv, NoLock, true);
	etl_leave_caller_context(&cc);
	if (OidIsValid(relid))
		result = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											get_rel_name(relid));
	return result;
}

/*
 * Refuse what writes (starting, resuming or changing a run, a table, a
 * job) on a hot standby, at once: a worker's start would wait for the end
 * of recovery, and a write fails only after work done for nothing.
 */
void
etl_refuse_on_standby(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("%s cannot run on a hot standby", what),
				 errdetail("This server is in recovery: etl_exec starts, resumes and changes runs only on the primary, and no worker runs here."),
				 errhint("Run it on the primary.  etl_wait_run, etl_get_checkpoint and the views work here.")));
}
