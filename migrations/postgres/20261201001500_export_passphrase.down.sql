ALTER TABLE exports DROP COLUMN failed_checks;
ALTER TABLE exports DROP COLUMN passphrase_sealed;
