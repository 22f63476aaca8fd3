-- How far each message Parley sent got: sent, delivered, read, or failed for good (with the
-- provider's reason). Kept apart from `messages` because a receipt can be written before
-- the message's own row (they travel separately); a state only ever moves forward.
CREATE TABLE message_deliveries (
  tenant_id      text        NOT NULL,
  message_id     uuid        NOT NULL,
  state          text        NOT NULL,
  rank           int2        NOT NULL,
  failure_reason text        NOT NULL DEFAULT '',
  updated_at     timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, message_id)
);

ALTER TABLE message_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE message_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON message_deliveries
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON message_deliveries TO parley_app;
