/*-------------------------------------------------------------------------
 *
 * key_resolver.c
 *	  Which target column a record key names: the column of that name,
 *	  else the first whose name matches ignoring case.
 *
 * Both the page reader (page_scan.c) and the jsonb path (loader.c) map
 * record keys to columns through a resolver.  APIs repeat their keys in
 * the same order from record to record, so a resolver remembers the key
 * last seen at each position of a record (a memcmp decides), and every
 * key it has seen in a small hash; only a key never seen before is
 * compared with the column names.
 *
 * A resolver is malloc'd and touches no PostgreSQL state, so the page
 * reader's thread can use one; each resolver serves one thread at a time.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"

#include "etl_exec.h"

#define KEY_CACHE_SIZE 256		/* positions remembered */
#define KEY_HASH_SIZE 512		/* keys remembered: half of it */

typedef struct KeySlot
{
	char	   *key;			/* NULL: empty */
	int			len;
	int			col;
} KeySlot;

struct EtlKeyResolver
{
	int			ncols;
	char	  **names;
	int		   *lens;
	KeySlot		slots[KEY_CACHE_SIZE];	/* by position in the record */
	KeySlot		hash[KEY_HASH_SIZE];	/* by key: owns the key copies */
	int			nhash;
};

/*
 * A resolver for the given column names (a NULL name: a column no key
 * names); NULL when memory runs out.
 */
EtlKeyResolver *
etl_key_resolver_create(int ncols, char *const *names)
{
	EtlKeyResolver *r = calloc(1, sizeof(EtlKeyResolver));

	if (r == NULL)
		return NULL;
	r->ncols = ncols;
	r->names = calloc(Max(ncols, 1), sizeof(char *));
	r->lens = calloc(Max(ncols, 1), sizeof(int));
	if (r->names == NULL || r->lens == NULL)
	{
		etl_key_resolver_free(r);
		return NULL;
	}
	for (int c = 0; c < ncols; c++)
	{
		if (names[c] == NULL)
		{
			r->lens[c] = -1;	/* no key is that long */
			continue;
		}
		if ((r->names[c] = strdup(names[c])) == NULL)
		{
			etl_key_resolver_free(r);
			return NULL;
		}
		r->lens[c] = strlen(names[c]);
	}
	return r;
}

void
etl_key_resolver_free(EtlKeyResolver *r)
{
	if (r == NULL)
		return;
	for (int i = 0; i < KEY_HASH_SIZE; i++)
		free(r->hash[i].key);
	if (r->names)
		for (int c = 0; c < r->ncols; c++)
			free(r->names[c]);
	free(r->names);
	free(r->lens);
	free(r);
}

/* the column for a key, from the names: exact first, then ignoring case */
static int
column_by_name(const EtlKeyResolver *r, const char *key, int len)
{
	int			ci = -1;

	for (int c = 0; c < r->ncols; c++)
	{
		if (r->lens[c] != len)
			continue;
		if (memcmp(r->names[c], key, len) == 0)
			return c;
		if (ci < 0 && pg_strncasecmp(r->names[c], key, len) == 0)
			ci = c;
	}
	return ci;
}

/*
 * The hash entry for a key (made on first sight), or NULL when the hash is
 * full -- an API with very many distinct keys -- or (*oom) memory ran out.
 */
static KeySlot *
hashed_key(EtlKeyResolver *r, const char *key, int len, bool *oom)
{
	uint32		h = hash_bytes((const unsigned char *) key, len);

	for (int probe = 0; probe < KEY_HASH_SIZE; probe++)
	{
		KeySlot    *e = &r->hash[(h + probe) & (KEY_HASH_SIZE - 1)];

		if (e->key == NULL)
		{
			if (r->nhash >= KEY_HASH_SIZE / 2)
				return NULL;
			if ((e->key = malloc(len + 1)) == NULL)
			{
				*oom = true;
				return NULL;
			}
			memcpy(e->key, key, len);
			e->key[len] = '\0';
			e->len = len;
			e->col = column_by_name(r, key, len);
			r->nhash++;
			return e;
		}
		if (e->len == len && memcmp(e->key, key, len) == 0)
			return e;
	}
	return NULL;
}

/*
 * The column the key at a position of a record names, or -1 for none; -2
 * when memory runs out.  The position's last key is compared first, then
 * the hash of every key seen.
 */
int
etl_key_resolver_column(EtlKeyResolver *r, int position, const char *key, int len)
{
	KeySlot    *slot = position < KEY_CACHE_SIZE ? &r->slots[position] : NULL;
	KeySlot    *entry;
	bool		oom = false;

	if (slot && slot->key && slot->len == len && memcmp(slot->key, key, len) == 0)
		return slot->col;
	entry = hashed_key(r, key, len, &oom);
	if (oom)
		return -2;
	if (entry == NULL)
		return column_by_name(r, key, len);
	if (slot)
		*slot = *entry;			/* shares the hash entry's copy of the key */
	return entry->col;
}
