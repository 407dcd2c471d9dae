-- How far a task's apply has come in its archive (JSON: the archive, the rows done, the
-- counts so far), recorded after each batch commits: a resumed apply starts there.
ALTER TABLE tasks ADD COLUMN apply_progress TEXT;
