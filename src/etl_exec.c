/*-------------------------------------------------------------------------
 *
 * etl_exec.c
 *	  Module entry point: declares the module and defines its settings.
 *
 * The library needs no shared_preload_libraries entry: callers load it when
 * they call an etl_exec function, and each worker loads it by name.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "etl_exec.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	etl_define_settings();
}
