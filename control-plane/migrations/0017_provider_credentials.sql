-- Provider credentials at rest (issue 14): named upstream API keys sealed with the envelope scheme of
-- `identity/secrets.rs` (AES-256-GCM data key per row, wrapped by the versioned master key; both layers
-- bind the row's name). No column ever holds the value in clear. `fingerprint` is the first 8 hex digits
-- of the value's SHA-256 (see docs/identity.md for why not the last characters). `revision` changes on
-- every write so the config server can tell a changed credential from an unchanged one without
-- decrypting or hashing the value again.
CREATE SEQUENCE identity.provider_credential_revisions;

CREATE TABLE identity.provider_credentials (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    key_version integer NOT NULL CHECK (key_version > 0),
    wrapped_dek bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    fingerprint text NOT NULL,
    revision    bigint NOT NULL DEFAULT nextval('identity.provider_credential_revisions'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The credentials a config version references, by name → revision (never a value): part of the
-- structure's hash, so a changed credential publishes a new snapshot; the stored base and document
-- keep the `${secret:<name>}` references.
ALTER TABLE config.versions ADD COLUMN secrets jsonb NOT NULL DEFAULT '{}';
