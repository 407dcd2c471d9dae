ALTER TABLE requests DROP COLUMN wants_copy;
DROP TABLE exports;
