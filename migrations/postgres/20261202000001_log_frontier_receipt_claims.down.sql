DROP INDEX receipts_one_completion;
ALTER TABLE receipts DROP COLUMN completion;
DROP INDEX tasks_unreceipted;
ALTER TABLE tasks DROP COLUMN receipt_claim_until;
ALTER TABLE tasks DROP COLUMN receipt_claimed_by;
ALTER TABLE requests DROP COLUMN receipt_claim_until;
ALTER TABLE requests DROP COLUMN receipt_claimed_by;
ALTER TABLE checkpoints DROP COLUMN frontier;
