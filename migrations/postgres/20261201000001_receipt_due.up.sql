-- A request whose completion receipt is still to be issued (set in the transaction that
-- completes it, cleared in the one that stores the receipt), so that a request with
-- nothing to change gets its receipt too, and no completed request is looked for twice.
ALTER TABLE requests ADD COLUMN receipt_due BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX requests_receipt_due ON requests (receipt_due) WHERE receipt_due;
