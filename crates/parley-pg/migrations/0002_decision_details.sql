-- Routing decisions say more: the strategy, what separated the chosen from the runner-up,
-- and the requirements applied after expansion for the time waited.
ALTER TABLE routing_decisions
  ADD COLUMN strategy     text  NOT NULL DEFAULT '',
  ADD COLUMN tie_breaker  text  NOT NULL DEFAULT '',
  ADD COLUMN requirements jsonb NOT NULL DEFAULT '{}';
