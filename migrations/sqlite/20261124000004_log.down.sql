DROP INDEX tasks_receipt;
ALTER TABLE tasks DROP COLUMN receipt_id;
DROP TABLE receipts;
DROP TABLE checkpoints;
DROP TABLE log_entries;
