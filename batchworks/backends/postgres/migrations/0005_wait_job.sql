-- batchworks schema, version 5: wait_job() wakes its waiters with a NOTIFY, only for the jobs
-- someone waits on.
--
-- A NOTIFY takes PostgreSQL's global notify lock at commit, so one for every settle flush
-- would serialize every worker's commits on it. Instead wait_job() marks the job (waited), and
-- the statements that end a job (settle, cancel, recovery) notify only for marked rows: a flush
-- of jobs nobody waits on queues no notification and takes no lock. A column with a constant
-- default is added without rewriting the table, and no index covers it, so setting it leaves
-- the row's updates HOT.
ALTER TABLE __SCHEMA__.jobs ADD COLUMN waited boolean NOT NULL DEFAULT false;
