-- Operators' internal notes on conversations (never sent to the customer), and the
-- customer's satisfaction answer after a conversation (one per conversation).
CREATE TABLE conversation_notes (
  tenant_id       text        NOT NULL,
  id              uuid        NOT NULL,
  conversation_id uuid        NOT NULL,
  author          text        NOT NULL,
  body            text        NOT NULL,
  created_at      timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX conversation_notes_conversation ON conversation_notes (tenant_id, conversation_id, created_at);

CREATE TABLE csat_answers (
  tenant_id       text        NOT NULL,
  conversation_id uuid        NOT NULL,
  score           smallint    NOT NULL CHECK (score BETWEEN 1 AND 5),
  comment         text        NOT NULL DEFAULT '',
  answered_at     timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, conversation_id)
);

ALTER TABLE conversation_notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_notes
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_notes TO parley_app;

ALTER TABLE csat_answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE csat_answers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON csat_answers
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON csat_answers TO parley_app;
