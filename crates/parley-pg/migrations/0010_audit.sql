-- Who read or changed what in history: one row per call of the history API that reads a
-- conversation, a customer or messages, searches, exports, erases, holds, links or sets a
-- retention policy. Written before the answer is sent; only appended to.
CREATE TABLE audit_log (
  tenant_id  text        NOT NULL,
  id         uuid        NOT NULL,
  at         timestamptz NOT NULL,
  actor      text        NOT NULL,
  role       text        NOT NULL,
  action     text        NOT NULL,
  target     text        NOT NULL,
  detail     text        NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX audit_log_target ON audit_log (tenant_id, target, at DESC);
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor, at DESC);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT ON audit_log TO parley_app;
