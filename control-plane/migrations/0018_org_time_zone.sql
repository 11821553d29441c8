-- Each org's time zone (issue 16): the IANA name its usage reports and statements use when the caller
-- names none. Validated by the control plane (chrono-tz) before it is written; existing orgs get UTC.
ALTER TABLE tenancy.orgs ADD COLUMN IF NOT EXISTS time_zone text NOT NULL DEFAULT 'UTC';
