-- Messages partitioned by month of `created_at`: a search or listing within a time range
-- reads only its months, and old months' indexes stop growing. The primary key includes
-- the month's column, as PostgreSQL requires; a message's id and time come from the same
-- record on every redelivery, so the writer's ON CONFLICT still sees a repeat. Months are
-- created ahead by `parley_ensure_message_months` (history calls it at start and hourly);
-- a message dated outside them (a far clock) lands in `messages_default`.
ALTER TABLE messages NO FORCE ROW LEVEL SECURITY;
ALTER TABLE messages RENAME TO messages_unpartitioned;
DROP INDEX messages_conversation;
DROP INDEX messages_customer;
DROP INDEX messages_search;
DROP INDEX messages_negative;

CREATE TABLE messages (
  tenant_id                 text        NOT NULL,
  id                        uuid        NOT NULL,
  conversation_id           uuid        NOT NULL,
  customer_id               uuid        NOT NULL,
  channel                   text        NOT NULL,
  sender                    text        NOT NULL,
  operator_id               text,
  body                      text        NOT NULL,
  quoted_message_id         uuid,
  quoted_channel_message_id text,
  quoted_text               text,
  delivery_state            text        NOT NULL,
  channel_message_id        text        NOT NULL,
  created_at                timestamptz NOT NULL,
  subject                   text        NOT NULL DEFAULT '',
  search                    tsvector    GENERATED ALWAYS AS (to_tsvector('russian', body)) STORED,
  anonymised                boolean     NOT NULL DEFAULT false,
  PRIMARY KEY (tenant_id, id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE messages_default PARTITION OF messages DEFAULT;

-- Creates the month partitions from `from_month` to `months_ahead` months after the current
-- one; a month whose range the default partition already holds rows of is left there.
CREATE FUNCTION parley_ensure_message_months(from_month timestamptz, months_ahead integer) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET timezone = 'UTC'
AS $$
DECLARE
  m timestamptz := date_trunc('month', from_month, 'UTC');
  last timestamptz := date_trunc('month', now(), 'UTC') + make_interval(months => months_ahead);
  name text;
  made integer := 0;
BEGIN
  WHILE m <= last LOOP
    name := 'messages_' || to_char(m AT TIME ZONE 'UTC', 'YYYY_MM');
    IF to_regclass(name) IS NULL
       AND NOT EXISTS (SELECT 1 FROM messages_default
                       WHERE created_at >= m AND created_at < m + interval '1 month') THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF messages FOR VALUES FROM (%L) TO (%L)',
                     name, m, m + interval '1 month');
      made := made + 1;
    END IF;
    m := m + interval '1 month';
  END LOOP;
  RETURN made;
END
$$;
REVOKE ALL ON FUNCTION parley_ensure_message_months(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION parley_ensure_message_months(timestamptz, integer) TO parley_app;

SELECT parley_ensure_message_months(
  LEAST(now(), COALESCE((SELECT min(created_at) FROM messages_unpartitioned), now())), 3);
INSERT INTO messages (tenant_id, id, conversation_id, customer_id, channel, sender, operator_id, body,
                      quoted_message_id, quoted_channel_message_id, quoted_text, delivery_state,
                      channel_message_id, created_at, subject, anonymised)
  SELECT tenant_id, id, conversation_id, customer_id, channel, sender, operator_id, body,
         quoted_message_id, quoted_channel_message_id, quoted_text, delivery_state,
         channel_message_id, created_at, subject, anonymised
  FROM messages_unpartitioned;
DROP TABLE messages_unpartitioned;

CREATE INDEX messages_id ON messages (tenant_id, id);
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, created_at, id);
CREATE INDEX messages_customer ON messages (tenant_id, customer_id, created_at DESC, id DESC);
CREATE INDEX messages_search ON messages USING gin (search);
CREATE INDEX messages_negative ON messages (tenant_id, created_at DESC, id DESC) WHERE parley_negative(search);

-- Every tenant-scoped table's guard: row-level security forced on the owner too, rows of
-- the tenant in `parley.tenant` only, and the application role's grants. Later migrations
-- call it for their tables.
CREATE FUNCTION parley_tenant_guard(t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
  EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
  EXECUTE format(
    'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''parley.tenant'', true)) '
    'WITH CHECK (tenant_id = current_setting(''parley.tenant'', true))', t);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO parley_app', t);
END
$$;
REVOKE ALL ON FUNCTION parley_tenant_guard(text) FROM PUBLIC;
SELECT parley_tenant_guard('messages');
