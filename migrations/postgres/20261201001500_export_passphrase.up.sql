-- The passphrase of an export's file never travels by email: it is kept sealed with the
-- token of the download link (only the token's hash is stored), and the download page
-- shows it once the subject has typed their address. Wrong addresses are counted; enough
-- of them lock the link.
ALTER TABLE exports ADD COLUMN passphrase_sealed TEXT;
ALTER TABLE exports ADD COLUMN failed_checks BIGINT NOT NULL DEFAULT 0;
