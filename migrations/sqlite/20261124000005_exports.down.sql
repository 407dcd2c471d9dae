DROP INDEX tasks_confirm_token;
ALTER TABLE tasks DROP COLUMN confirm_token_sha256;
ALTER TABLE requests DROP COLUMN wants_copy;
DROP TABLE exports;
