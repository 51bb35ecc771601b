/*
 * test/sanitize/canary.c: two functions with a deliberate bug each, built
 * with the same sanitizer flags as etl_exec and called by test/sanitize.sh
 * before the suite, to prove that the server really runs under ASan and
 * UBSan and that their reports reach the files the script scans (a
 * sanitizer run that cannot report anything would pass for nothing).
 * Never installed outside the script's private PostgreSQL tree.
 */
#include "postgres.h"
#include "fmgr.h"

#include <stdlib.h>

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(sanitize_canary_ubsan);
PG_FUNCTION_INFO_V1(sanitize_canary_asan);

/* UBSan: shifting an int by 32 or more bits is undefined (recoverable) */
Datum
sanitize_canary_ubsan(PG_FUNCTION_ARGS)
{
    int32       shift = PG_GETARG_INT32(0);
    int32       one = 1;

    PG_RETURN_INT32(one << shift);
}

/* ASan: reads one byte past a malloc'd block (the backend aborts) */
Datum
sanitize_canary_asan(PG_FUNCTION_ARGS)
{
    int32       n = PG_GETARG_INT32(0);
    volatile char *p = malloc(n);
    char        c;

    if (p == NULL)
        PG_RETURN_NULL();
    c = p[n];
    free((void *) p);
    PG_RETURN_INT32(c);
}
