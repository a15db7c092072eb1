-- The files a task's workspace held after each of its steps, as
-- {"relative/path": size_in_bytes, ...} (NULL: none, or not recorded).
-- A task that resumes on a worker whose workspace lacks a file a finished
-- step left there (another container, or one started anew) runs that step
-- again, and the steps after it, instead of failing on the missing input.
ALTER TABLE task_steps ADD COLUMN files jsonb NULL;
