-- One person behind several channel customers. Each channel identity is its own customer
-- (routing derives the id from the address, and replies go back where the customer wrote);
-- a link joins a customer to a person (the id of the customer it was joined to) for reading
-- history: the customer's record and timeline are the person's. Links come only from
-- verified signals: the same phone number on SMS and WhatsApp (the carrier and WhatsApp
-- verified it), or an operator's explicit merge. A row linking a customer to itself with
-- reason 'unlinked' records an operator's unmerge, so no automatic link comes back.
CREATE TABLE customer_links (
  tenant_id   text        NOT NULL,
  customer_id uuid        NOT NULL,
  person_id   uuid        NOT NULL,
  reason      text        NOT NULL CHECK (reason IN ('verified_phone', 'operator', 'unlinked')),
  linked_by   text        NOT NULL,
  linked_at   timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, customer_id)
);
CREATE INDEX customer_links_person ON customer_links (tenant_id, person_id);
CREATE INDEX customer_identities_phone ON customer_identities (tenant_id, (regexp_replace(address, '[^0-9]', '', 'g')))
  WHERE channel IN ('sms', 'whatsapp');

ALTER TABLE customer_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE customer_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON customer_links
  USING (tenant_id = current_setting('parley.tenant', true))
  WITH CHECK (tenant_id = current_setting('parley.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON customer_links TO parley_app;
