-- Admin access by API key (issue 14): a key may be granted admin-API roles of its own org, explicitly at
-- creation and never by default. `platform-admin` is not grantable to a key: a key belongs to one org,
-- and an org's key must not administer the platform. The data plane never sees this column.
ALTER TABLE tenancy.api_keys
    ADD COLUMN admin_roles text[] NOT NULL DEFAULT '{}'
        CHECK (admin_roles <@ ARRAY['org-admin', 'org-member', 'billing-viewer']::text[]);
