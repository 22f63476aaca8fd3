-- A web chat user the tenant's site vouches for may come with a phone number the site
-- signed together with the user id (the site verified it, as a carrier or WhatsApp does
-- for their numbers). It is kept on the identity, so that customer is linked to the SMS
-- and WhatsApp customers with that number, whichever writes first.
ALTER TABLE customer_identities ADD COLUMN verified_phone text;
CREATE INDEX customer_identities_verified_phone
  ON customer_identities (tenant_id, (regexp_replace(verified_phone, '[^0-9]', '', 'g')))
  WHERE verified_phone IS NOT NULL;
