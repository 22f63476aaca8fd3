-- Full-text search over message texts. PostgreSQL's `russian` configuration stems Cyrillic
-- words with the Russian snowball stemmer and Latin ones with the English one, so one
-- vector serves both languages ("жалоба" finds "жалобы", "refund" finds "refunded").
ALTER TABLE messages ADD COLUMN search tsvector
  GENERATED ALWAYS AS (to_tsvector('russian', body)) STORED;
CREATE INDEX messages_search ON messages USING gin (search);
