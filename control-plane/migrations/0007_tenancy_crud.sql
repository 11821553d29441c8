-- Tenancy CRUD completion (owned by tenancy): org soft delete, user versions, tier delete.

-- A deleted org keeps its row (its keys, users and audit trail still name it) but vanishes from the
-- API; its name is free again, so uniqueness holds among live orgs only.
ALTER TABLE tenancy.orgs ADD COLUMN deleted_at timestamptz;
ALTER TABLE tenancy.orgs DROP CONSTRAINT orgs_name_key;
CREATE UNIQUE INDEX orgs_live_name ON tenancy.orgs (name) WHERE deleted_at IS NULL;

-- A user's ETag, as for orgs: PATCH names the version it read and loses (412) to a newer change.
ALTER TABLE tenancy.users ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE tenancy.users ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- A tier can be deleted once no key the proxies hold uses it; a revoked key keeps its tier's name as
-- history, so the foreign key (which would pin the tier forever) goes. Tenancy enforces the reference
-- itself: key creation takes the tier row FOR SHARE and tier deletion locks it, so the two serialize.
ALTER TABLE tenancy.api_keys DROP CONSTRAINT api_keys_tier_fkey;
CREATE INDEX api_keys_tier ON tenancy.api_keys (tier);
