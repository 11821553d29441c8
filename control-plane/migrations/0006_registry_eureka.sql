-- Registry, second step: what Eureka clients need, in the same table, so `/v1/registry/instances` and
-- `/eureka/apps` read one truth that every control-plane replica shares.
--
-- `app`: the Eureka application name (upper case). Gateway instances get `LEAKY-<ROLE>`; instances of
-- other apps registered through Eureka take their role from the app name, so the role is no longer
-- limited to the gateway's three.
ALTER TABLE registry.instances DROP CONSTRAINT instances_role_check;
ALTER TABLE registry.instances ADD COLUMN app text;
UPDATE registry.instances SET app = 'LEAKY-' || upper(role);
ALTER TABLE registry.instances ALTER COLUMN app SET NOT NULL;
CREATE INDEX instances_app ON registry.instances (app, id);

-- Seconds without a heartbeat after which the instance is `down` (null: the registry's default, 30 s;
-- Eureka clients state their own lease, 90 s by default).
ALTER TABLE registry.instances ADD COLUMN lease_secs integer CHECK (lease_secs BETWEEN 1 AND 3600);
-- The status the instance reports (Eureka's UP, DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN; null: UP),
-- and an operator's override of it (`PUT /eureka/apps/{app}/{id}/status`).
ALTER TABLE registry.instances ADD COLUMN reported_status text;
ALTER TABLE registry.instances ADD COLUMN status_override text;
-- The instance object a Eureka client registered (host, ports, URLs, metadata), served back as sent.
ALTER TABLE registry.instances ADD COLUMN meta jsonb;

-- Bumped by every change to the set of instances (register, cancel, status override, sweep): Eureka's
-- `versions__delta`. A sequence, so replicas share it without a lock.
CREATE SEQUENCE registry.revision;
