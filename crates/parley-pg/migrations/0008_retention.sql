-- Retention policies: per tenant and channel ('*' for every channel without its own), how
-- many days a closed conversation is kept, and what happens then: 'delete' (the
-- conversation, its messages, files, decisions) or 'anonymise' (the conversation and its
-- statistics stay; texts, subjects, quotes and files go). A customer under a legal hold is
-- left alone.
CREATE TABLE retention_policies (
  tenant_id  text        NOT NULL,
  channel    text        NOT NULL,
  days       integer     NOT NULL CHECK (days >= 0),
  action     text        NOT NULL CHECK (action IN ('delete', 'anonymise')),
  set_by     text        NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, channel)
);
ALTER TABLE messages ADD COLUMN anonymised boolean NOT NULL DEFAULT false;
CREATE INDEX conversations_closed ON conversations (tenant_id, closed_at) WHERE status = 'closed';

ALTER TABLE retention_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE retention_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON retention_policies
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON retention_policies TO parley_app;
