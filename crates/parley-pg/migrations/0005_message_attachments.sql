-- The files sent with messages: what the channel said of each (kind, type, name, size) in the
-- order it gave them. The bytes live in the media store under the tenant and the id.
CREATE TABLE message_attachments (
  tenant_id  text   NOT NULL,
  message_id uuid   NOT NULL,
  position   int2   NOT NULL,
  id         uuid   NOT NULL,
  kind       text   NOT NULL,
  mime_type  text   NOT NULL DEFAULT '',
  file_name  text   NOT NULL DEFAULT '',
  size_bytes bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, message_id, position)
);
CREATE UNIQUE INDEX message_attachments_id ON message_attachments (tenant_id, id);

ALTER TABLE message_attachments ENABLE ROW LEVEL SECURITY;
ALTER TABLE message_attachments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON message_attachments
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON message_attachments TO parley_app;
