/*-------------------------------------------------------------------------
 *
 * role_switch.c
 *	  Acts as another role for a while, the one way etl_exec does it.
 *
 * What user code can run in -- type input functions, triggers, defaults
 * and the writes of a load (as the run's role), a caller's own query text
 * or a name the caller's search_path resolves (as the SQL caller) -- runs
 * as that role in a restricted operation, with its GUC changes undone
 * afterwards: the worker's bookkeeping runs as a superuser and must not
 * inherit, say, a search_path a trigger set.  The order is PostgreSQL's
 * own (vacuum's, for a table owner's index functions): the user first,
 * then a GUC nest level; leaving undoes them the other way round.  On
 * error the (sub)transaction's abort undoes all of it.  A leaf.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "etl_exec.h"

/*
 * Act as role until etl_role_switch_leave(sw): in a restricted operation,
 * with search_path set to search_path when that is not NULL, and in a
 * read-only transaction when read_only (as SET TRANSACTION READ ONLY does:
 * the setting itself cannot be saved and restored by a function from
 * PostgreSQL 16 on).
 */
void
etl_role_switch_enter(EtlRoleSwitch *sw, Oid role, const char *search_path,
					  bool read_only)
{
	GetUserIdAndSecContext(&sw->userid, &sw->sec_context);
	SetUserIdAndSecContext(role, sw->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	sw->nestlevel = NewGUCNestLevel();
	if (search_path != NULL)
		(void) set_config_option("search_path", search_path,
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	sw->made_read_only = read_only;
	sw->was_read_only = XactReadOnly;
	if (read_only)
		XactReadOnly = true;
}

void
etl_role_switch_leave(EtlRoleSwitch *sw)
{
	if (sw->made_read_only)
		XactReadOnly = sw->was_read_only;
	/* false: a SET the role's code made is undone here, as VACUUM does */
	AtEOXact_GUC(false, sw->nestlevel);
	SetUserIdAndSecContext(sw->userid, sw->sec_context);
}
