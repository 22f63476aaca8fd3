-- Conversations are listed by status, queue, operator, channel and time (newest first by
-- when they opened). The indexes follow created_at, which never changes, so a message
-- that only moves a conversation's updated_at is a heap-only update that touches no index
-- (with room left on each page for it).
DROP INDEX conversations_open;
DROP INDEX conversations_operator;
CREATE INDEX conversations_created ON conversations (tenant_id, created_at DESC, id DESC);
CREATE INDEX conversations_status ON conversations (tenant_id, status, created_at DESC, id DESC);
CREATE INDEX conversations_queue ON conversations (tenant_id, queue_id, created_at DESC, id DESC);
-- By operator means every conversation they held at some time, found by its assignments.
CREATE INDEX assignments_operator ON assignments (tenant_id, operator_id, conversation_id);
ALTER TABLE conversations SET (fillfactor = 80);
