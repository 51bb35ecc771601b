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
 * operation (role_switch.c): for what the caller's own rights must decide.
 * read_only: in a read-only transaction besides, for the caller's own
 * query text (a job's partitions query), which may read what the caller
 * may read and change nothing.  Undone by etl_role_switch_leave(), or by
 * the (sub)transaction's abort on error.
 */
void
etl_act_as_caller(EtlRoleSwitch *sw, bool read_only)
{
	etl_role_switch_enter(sw, etl_api_caller(), api_caller_search_path, read_only);
}

/*
 * The table a (possibly unqualified) name means to the caller, quoted and
 * schema-qualified; NULL when there is none.
 */
char *
etl_resolve_target(const char *name)
{
	EtlRoleSwitch sw;
	RangeVar   *rv;
	Oid			relid;
	char	   *result = NULL;

	etl_act_as_caller(&sw, false);
	rv = makeRangeVarFromNameList(etl_qualified_name_list(name));
	relid = RangeVarGetRelid(rv, NoLock, true);
	etl_role_switch_leave(&sw);
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
