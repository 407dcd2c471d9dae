-- The frontier (compact range) of the tree each checkpoint signs: the roots of the perfect
-- subtrees of the binary decomposition of its size, largest first, as hex, concatenated.
-- An append starts from the latest checkpoint's frontier and the entries after it, never
-- from every leaf. Checkpoints written before this column have none: the first append
-- after it computes one from the leaves, once.
ALTER TABLE checkpoints ADD COLUMN frontier TEXT;

-- Receipt work is claimed before it is built, as tasks are leased (an owner and an
-- expiry): a request's completion receipt while it is due, and a finished task that no
-- receipt covers (a sweep, or work that finished after its request's completion receipt).
-- The receipt's transaction commits only while the claim is still its worker's.
ALTER TABLE requests ADD COLUMN receipt_claimed_by TEXT;
ALTER TABLE requests ADD COLUMN receipt_claim_until TIMESTAMPTZ;
ALTER TABLE tasks ADD COLUMN receipt_claimed_by TEXT;
ALTER TABLE tasks ADD COLUMN receipt_claim_until TIMESTAMPTZ;
CREATE INDEX tasks_unreceipted ON tasks (completed_at) WHERE receipt_id IS NULL AND state = 'done';

-- A request has at most one completion receipt: the database refuses a second. Receipts
-- issued before this column: a completed request's first one is its completion receipt.
ALTER TABLE receipts ADD COLUMN completion BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE receipts SET completion = TRUE
 WHERE request_id IS NOT NULL
   AND log_idx = (SELECT MIN(r.log_idx) FROM receipts r WHERE r.request_id = receipts.request_id)
   AND EXISTS (SELECT 1 FROM history h WHERE h.request_id = receipts.request_id AND h.to_state = 'completed');
CREATE UNIQUE INDEX receipts_one_completion ON receipts (request_id) WHERE completion = TRUE;
