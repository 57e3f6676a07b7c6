-- One lease row per worker: a heartbeat renews this one row instead of
-- every generation the worker holds. A generation's lease holds while its
-- own expiry (generations.lease_expires_at) has not passed and its owner's
-- row here, if there is one, has not expired either. This release writes a
-- generation's expiry once, when it claims it: the deadline plus one TTL,
-- so that a worker that keeps heartbeating still cannot keep overdue work
-- past one TTL. It writes its own row here in the same statement.
--
-- Rolling upgrade: the previous release writes no row here and renews
-- generations.lease_expires_at itself, so its leases hold as they did. It
-- reads this release's leases as held until their expiry (the deadline
-- plus one TTL): an instance of this release that dies while the previous
-- release still runs has its work taken over by instances of this release,
-- or ended as overdue.
CREATE TABLE workers (
    owner       text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
