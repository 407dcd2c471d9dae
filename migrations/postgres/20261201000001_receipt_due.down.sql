DROP INDEX requests_receipt_due;
ALTER TABLE requests DROP COLUMN receipt_due;
