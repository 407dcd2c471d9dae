-- The tasks leased now, by whom and until when: what a round waits on and what a
-- dead worker leaves, found without reading every pending follow-up (issue 8: 92 ms a
-- round with 200 000 follow-ups waiting for their day).
CREATE INDEX tasks_leased ON tasks (lease_owner, lease_expires_at) WHERE lease_owner IS NOT NULL;
