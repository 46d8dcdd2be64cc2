-- batchworks schema, version 2: a handler time limit per job, given at enqueue.
ALTER TABLE __SCHEMA__.jobs ADD COLUMN timeout double precision CHECK (timeout > 0);
