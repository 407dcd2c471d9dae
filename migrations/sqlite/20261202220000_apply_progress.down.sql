ALTER TABLE tasks DROP COLUMN apply_progress;
