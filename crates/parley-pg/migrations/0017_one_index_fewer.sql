-- `messages_id (tenant_id, id)` repeats the leading columns of the primary key
-- (tenant_id, id, created_at), which serves every lookup by id as well: the writer has one
-- index fewer to update for each message.
DROP INDEX messages_id;
