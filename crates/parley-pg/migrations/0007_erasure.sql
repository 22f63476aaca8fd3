-- Legal holds and erasure receipts. A customer under a legal hold cannot be erased (nor,
-- later, reached by retention). An erasure leaves a receipt naming who asked, why, when
-- and how much was removed — and nothing of what was removed.
CREATE TABLE legal_holds (
  tenant_id   text        NOT NULL,
  customer_id uuid        NOT NULL,
  reason      text        NOT NULL,
  set_by      text        NOT NULL,
  set_at      timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE erasure_receipts (
  tenant_id    text        NOT NULL,
  id           uuid        NOT NULL,
  customer_id  uuid        NOT NULL,
  requested_by text        NOT NULL,
  reason       text        NOT NULL,
  erased_at    timestamptz NOT NULL,
  conversations integer    NOT NULL,
  messages     integer     NOT NULL,
  identities   integer     NOT NULL,
  attachments  integer     NOT NULL,
  files        integer     NOT NULL DEFAULT 0,
  log_records  bigint      NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX erasure_receipts_customer ON erasure_receipts (tenant_id, customer_id);

ALTER TABLE legal_holds ENABLE ROW LEVEL SECURITY;
ALTER TABLE legal_holds FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON legal_holds
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON legal_holds TO parley_app;

ALTER TABLE erasure_receipts ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasure_receipts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON erasure_receipts
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE ON erasure_receipts TO parley_app;
