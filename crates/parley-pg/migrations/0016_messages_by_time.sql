-- A tenant's messages in time order: a search with common words reads the newest messages
-- in this order and stops once its page is full, instead of sorting every match.
CREATE INDEX messages_time ON messages (tenant_id, created_at DESC, id DESC);

-- Rare words are found through the search index. Under row-level security PostgreSQL uses
-- an index for a condition only when its function is leakproof (it cannot reveal another
-- tenant's rows through an error), and `tsvector @@ tsquery` is not marked so by default,
-- although its errors depend on the query alone. Marking it needs a superuser; without
-- one the migration goes on, and searches for rare words read the tenant's messages in
-- time order instead (correct, slower): a superuser can run the statement later.
DO $$
BEGIN
  ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'not a superuser: run ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF as one for fast searches of rare words';
END
$$;
