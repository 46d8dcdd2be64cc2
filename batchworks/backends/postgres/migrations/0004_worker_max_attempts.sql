-- batchworks schema, version 4: each worker records its retry policy's max_attempts, so that
-- operators see the maximum of attempts a job enqueued without its own will get, before its
-- first claim fixes it on the job.
ALTER TABLE __SCHEMA__.workers ADD COLUMN max_attempts integer CHECK (max_attempts >= 1);
