/*-------------------------------------------------------------------------
 *
 * select_check.c
 *	  Whether a job's query text is one plain SELECT, decided by the raw
 *	  parser alone.
 *
 * A job writer's query (partitions.query) is checked when the job is
 * written, by a trigger that may fire as anyone who updates the row -- a
 * superuser restoring the tables, a SECURITY DEFINER function.  So the
 * check runs none of the text: the raw parser only builds a tree (no name
 * is looked up, no function called, nothing planned), and the tree must
 * be exactly one SELECT that neither writes (SELECT INTO, a data-modifying
 * WITH) nor locks rows (FOR UPDATE/SHARE).  The text itself runs only at
 * run start, as the run's role, read-only (caller.c).  A leaf.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "utils/builtins.h"

#include "etl_exec.h"

/* why a SELECT statement's tree is not a plain, read-only one; NULL if it is */
static const char *
select_problem(SelectStmt *select)
{
	ListCell   *lc;

	if (select->intoClause != NULL)
		return "SELECT INTO creates a table";
	if (select->lockingClause != NIL)
		return "FOR UPDATE or FOR SHARE locks rows";
	if (select->withClause != NULL)
		foreach(lc, select->withClause->ctes)
		{
			CommonTableExpr *cte = lfirst_node(CommonTableExpr, lc);

			if (!IsA(cte->ctequery, SelectStmt))
				return "a WITH query that is not a SELECT changes data";
		}
	if (select->larg && select_problem(select->larg))
		return select_problem(select->larg);
	if (select->rarg && select_problem(select->rarg))
		return select_problem(select->rarg);
	return NULL;
}

/* a syntax error's position is in the query text, not in the statement that checks it */
static void
query_error_position(void *arg)
{
	int			position = geterrposition();

	if (position > 0)
	{
		errposition(0);
		internalerrposition(position);
		internalerrquery((const char *) arg);
	}
}

/*
 * Why sql is not exactly one plain SELECT, or NULL when it is.  A text
 * the parser cannot read raises its syntax error.
 */
const char *
etl_select_problem(const char *sql)
{
	ErrorContextCallback errcb;
	List	   *stmts;
	Node	   *stmt;

	errcb.callback = query_error_position;
	errcb.arg = unconstify(char *, sql);
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	error_context_stack = errcb.previous;

	if (list_length(stmts) == 0)
		return "it holds no statement";
	if (list_length(stmts) > 1)
		return psprintf("it holds %d statements", list_length(stmts));
	stmt = linitial_node(RawStmt, stmts)->stmt;
	if (!IsA(stmt, SelectStmt))
		return "it is not a SELECT statement";
	return select_problem((SelectStmt *) stmt);
}

/*
 * _etl_select_problem(sql text) RETURNS text: etl_select_problem() for the
 * triggers that check jobs.
 */
PG_FUNCTION_INFO_V1(etl_select_problem_sql);
Datum
etl_select_problem_sql(PG_FUNCTION_ARGS)
{
	const char *problem = etl_select_problem(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}
