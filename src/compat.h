/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  The server APIs that differ between the PostgreSQL majors etl_exec
 *	  supports (15, 17, 18), behind PG_VERSION_NUM, in one place.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ETL_COMPAT_H
#define ETL_COMPAT_H

#include "postgres.h"

#include "executor/executor.h"
#include "nodes/bitmapset.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "catalog/pg_class.h"
#include "utils/regproc.h"

#if PG_VERSION_NUM >= 170000
#include "storage/dsm_registry.h"
#endif

/* a possibly qualified name as a list of String nodes (16 added escontext) */
#if PG_VERSION_NUM >= 160000
#define etl_qualified_name_list(name) stringToQualifiedNameList((name), NULL)
#else
#define etl_qualified_name_list(name) stringToQualifiedNameList(name)
#endif

/* the i-th (1-based) backend of pgstat's local snapshot (16 renamed it) */
#if PG_VERSION_NUM >= 160000
#define etl_local_backend_status(i) pgstat_get_local_beentry_by_index(i)
#else
#define etl_local_backend_status(i) pgstat_fetch_stat_local_beentry(i)
#endif

/* whether a role owns a relation (16 made the check generic) */
#if PG_VERSION_NUM >= 160000
#define etl_owns_relation(relid, role) object_ownercheck(RelationRelationId, (relid), (role))
#else
#define etl_owns_relation(relid, role) pg_class_ownercheck((relid), (role))
#endif

/*
 * Require the privileges perms (ACL_INSERT, ACL_UPDATE, ACL_SELECT) on the
 * given columns (attribute numbers offset by
 * FirstLowInvalidHeapAttributeNumber) of the relation an nsitem of pstate
 * names, and check them as the current user, as the executor checks a
 * statement's: what COPY FROM's caller does before BeginCopyFrom, and what
 * INSERT ... ON CONFLICT DO UPDATE needs.  PostgreSQL 16 moved the
 * required permissions from the range table entry into RTEPermissionInfo.
 */
static inline void
etl_check_permissions(ParseState *pstate, ParseNamespaceItem *nsitem, AclMode perms,
					  Bitmapset *inserted_cols, Bitmapset *updated_cols,
					  Bitmapset *selected_cols)
{
#if PG_VERSION_NUM >= 160000
	nsitem->p_perminfo->requiredPerms = perms;
	nsitem->p_perminfo->insertedCols = inserted_cols;
	nsitem->p_perminfo->updatedCols = updated_cols;
	nsitem->p_perminfo->selectedCols = selected_cols;
	(void) ExecCheckPermissions(pstate->p_rtable, pstate->p_rteperminfos, true);
#else
	nsitem->p_rte->requiredPerms = perms;
	nsitem->p_rte->insertedCols = inserted_cols;
	nsitem->p_rte->updatedCols = updated_cols;
	nsitem->p_rte->selectedCols = selected_cols;
	(void) ExecCheckRTPerms(pstate->p_rtable, true);
#endif
}

/*
 * A struct of shared memory found by name, made (and init called on it) by
 * the first process that asks, without shared_preload_libraries.  17 has
 * a registry of named DSM segments.  15 has none: the struct is carved
 * from the main segment's slack, under AddinShmemInitLock, as extensions
 * do at startup -- a backend may do it later, it is found by name in the
 * shared index by every process (all map the main segment at one address).
 * Both are reinitialised with the server's shared memory (a crash restart).
 */
static inline void *
etl_shared_struct(const char *name, Size size, void (*init) (void *ptr))
{
	bool		found;
#if PG_VERSION_NUM >= 170000
	return GetNamedDSMSegment(name, size, init, &found);
#else
	void	   *ptr;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ptr = ShmemInitStruct(name, size, &found);
	if (!found)
		init(ptr);
	LWLockRelease(AddinShmemInitLock);
	return ptr;
#endif
}

#endif							/* ETL_COMPAT_H */
