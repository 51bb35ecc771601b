/*-------------------------------------------------------------------------
 *
 * fuzz_spec.h
 *	  A page reader's spec from a fuzz input's option line (fuzz_spec.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ETL_FUZZ_SPEC_H
#define ETL_FUZZ_SPEC_H

#include "etl_exec.h"
#include "fuzz.h"

#define FUZZ_MAX_COLS 64

typedef struct FuzzPageSpec
{
	EtlScanSpec spec;
	EtlCsvOptions csv;
	char	   *names[FUZZ_MAX_COLS];
	bool		is_json[FUZZ_MAX_COLS];
	bool		is_array[FUZZ_MAX_COLS];
	EtlKeyPath	map[FUZZ_MAX_COLS];
	/* the same paths as jsonpath text; total and next NULL when not given */
	char	   *records_path;
	char	   *total_path;
	char	   *next_path;
} FuzzPageSpec;

extern void fuzz_page_spec(const char *opts, FuzzPageSpec *ps);
extern void fuzz_page_spec_free(FuzzPageSpec *ps);

#endif							/* ETL_FUZZ_SPEC_H */
