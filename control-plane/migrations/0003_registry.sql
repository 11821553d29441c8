-- Bounded context "registry": the live instances of the system (proxies, control planes, analytics),
-- each registering itself and sending heartbeats. Only the registry module reads or writes this schema.
CREATE SCHEMA registry;

CREATE TABLE registry.instances (
    -- Chosen by the instance (e.g. `proxy-eu-1`); re-registering with the same id replaces the row.
    id                text PRIMARY KEY,
    role              text NOT NULL CHECK (role IN ('proxy', 'control-plane', 'analytics')),
    address           text NOT NULL,
    version           text NOT NULL,
    -- The config version the instance last reported running (null: none yet).
    config_version    bigint,
    started_at        timestamptz NOT NULL,
    registered_at     timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL
);

CREATE INDEX instances_heartbeat ON registry.instances (last_heartbeat_at);
