-- Parley history, first version: customers with channel identities, conversations,
-- messages, assignments and routing decisions. Every table is tenant-scoped and guarded by
-- row-level security: a session sees only rows of the tenant in `parley.tenant`, which the
-- application sets with SET LOCAL inside each transaction; without it, it sees nothing.

DO $$
BEGIN
  CREATE ROLE parley_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;
END
$$;

CREATE TABLE customers (
  tenant_id    text        NOT NULL,
  id           uuid        NOT NULL,
  display_name text        NOT NULL DEFAULT '',
  created_at   timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id)
);

CREATE TABLE customer_identities (
  tenant_id     text        NOT NULL,
  channel       text        NOT NULL,
  address       text        NOT NULL,
  customer_id   uuid        NOT NULL,
  first_seen_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, channel, address),
  FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX customer_identities_customer ON customer_identities (tenant_id, customer_id);

CREATE TABLE conversations (
  tenant_id         text        NOT NULL,
  id                uuid        NOT NULL,
  customer_id       uuid        NOT NULL,
  channel           text        NOT NULL,
  channel_config_id text        NOT NULL,
  queue_id          text        NOT NULL,
  status            text        NOT NULL,
  operator_id       text,
  priority          integer     NOT NULL DEFAULT 0,
  created_at        timestamptz NOT NULL,
  updated_at        timestamptz NOT NULL,
  closed_at         timestamptz,
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX conversations_customer ON conversations (tenant_id, customer_id, created_at DESC);
CREATE INDEX conversations_open ON conversations (tenant_id, status, updated_at DESC) WHERE status <> 'closed';
CREATE INDEX conversations_operator ON conversations (tenant_id, operator_id, updated_at DESC);

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
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, created_at, id);
CREATE INDEX messages_customer ON messages (tenant_id, customer_id, created_at DESC, id DESC);

CREATE TABLE assignments (
  tenant_id       text        NOT NULL,
  event_id        uuid        NOT NULL,
  conversation_id uuid        NOT NULL,
  operator_id     text        NOT NULL,
  reason          text        NOT NULL,
  note            text        NOT NULL DEFAULT '',
  assigned_at     timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX assignments_conversation ON assignments (tenant_id, conversation_id, assigned_at);

CREATE TABLE routing_decisions (
  tenant_id          text        NOT NULL,
  id                 uuid        NOT NULL,
  conversation_id    uuid        NOT NULL,
  queue_id           text        NOT NULL,
  chosen_operator_id text,
  reason             text        NOT NULL,
  candidates         jsonb       NOT NULL,
  decided_at         timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX routing_decisions_conversation ON routing_decisions (tenant_id, conversation_id, decided_at);

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['customers', 'customer_identities', 'conversations', 'messages', 'assignments',
                           'routing_decisions']
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''parley.tenant'', true)) '
      'WITH CHECK (tenant_id = current_setting(''parley.tenant'', true))', t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO parley_app', t);
  END LOOP;
END
$$;
