-- One videos row per task and file. The video step's upsert used to be an
-- UPDATE, then an INSERT when nothing was updated: two runs of the step at
-- once (a rescued task whose first worker had not stopped yet) could both
-- insert. With this index the step uses INSERT ... ON CONFLICT, which
-- PostgreSQL makes safe under concurrency.

-- Duplicates left by that race: keep the newest row of each (task, file).
DELETE FROM videos v
 USING videos w
 WHERE v.task_id = w.task_id AND v.path = w.path AND v.id < w.id;

CREATE UNIQUE INDEX videos_task_path_key ON videos (task_id, path);
