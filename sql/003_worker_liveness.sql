-- Liveness as a lease (docs/fencing.md): a worker that holds tasks renews
-- workers.alive_until every VG_LIVENESS_SECONDS / 5 on a connection of its
-- own. Other workers rescue the tasks of an instance only once its
-- alive_until has passed on the database clock, and the owner stops its
-- tasks before then on its own clock. A lost session or a released advisory
-- lock is no longer read as death. NULL: the instance holds no liveness
-- (it never claimed, or claims without a worker row); only the task lease
-- then protects its tasks.
ALTER TABLE workers ADD COLUMN alive_until timestamptz NULL;
