/*-------------------------------------------------------------------------
 *
 * subxact.c
 *	  Runs a step in a subtransaction of its own, the one way etl_exec
 *	  does it.
 *
 * A step that may fail without failing what surrounds it (a COPY tried
 * before the record-by-record way, a request answered apart from the page
 * waited for, a refresh token saved after the page's commit, a run started
 * by the launcher) runs through etl_subxact_try(): on error the
 * subtransaction is rolled back, the memory context and resource owner
 * are the caller's again, and the error is copied and redacted (a secret
 * the API echoed goes no further, kept or raised).  The caller then says
 * whether it takes the error or it is raised again.  A leaf: it calls only
 * redact.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "etl_exec.h"

/*
 * Run step(arg) in a subtransaction of its own, kept when the step returns
 * true, rolled back when it returns false (a run that must stop first).
 * NULL when no error was raised; else its error, copied into error_cxt and redacted, with the
 * subtransaction rolled back -- when taken is NULL or taken(its SQLSTATE)
 * says the caller takes it; any other error is raised again.
 */
ErrorData *
etl_subxact_try(EtlSubxactStep step, void *arg, MemoryContext error_cxt,
				bool (*taken) (int sqlerrcode))
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile failure = NULL;

	BeginInternalSubTransaction(NULL);
	/* the step allocates where its caller does, not in the subtransaction */
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (step(arg))
			ReleaseCurrentSubTransaction();
		else
			RollbackAndReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		failure = etl_catch_error(error_cxt);
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (failure != NULL && taken != NULL && !taken(failure->sqlerrcode))
		ReThrowError(failure);
	return failure;
}
