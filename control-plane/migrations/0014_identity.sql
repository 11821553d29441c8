-- Bounded context "identity" (issue 14, first increment): the OAuth2 authorization server's signing
-- keys and clients. Only the identity module reads or writes this schema.
CREATE SCHEMA identity;

-- Token signing keys. The private key is envelope-encrypted (see identity/secrets.rs): `wrapped_dek`
-- is the data key under master key `key_version`, `ciphertext` the PKCS#8 / PKCS#1 DER under the data
-- key, both bound to `kid`. The public JWK is stored in clear: it is published.
-- pending (published, not signing) -> active (signing; one per alg) -> retired (published until
-- `remove_at`, when every token it signed has expired) -> deleted.
CREATE TABLE identity.signing_keys (
    kid          text PRIMARY KEY,
    alg          text NOT NULL CHECK (alg IN ('ES256', 'RS256', 'EdDSA')),
    state        text NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
    public_jwk   jsonb NOT NULL,
    key_version  integer NOT NULL,
    wrapped_dek  bytea NOT NULL,
    ciphertext   bytea NOT NULL,
    created_at   timestamptz NOT NULL,
    activate_at  timestamptz NOT NULL,
    activated_at timestamptz,
    retired_at   timestamptz,
    remove_at    timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON identity.signing_keys (alg) WHERE state = 'active';
CREATE INDEX signing_keys_by_version ON identity.signing_keys (key_version);

-- OAuth2 clients (client_credentials). The secret is stored as an argon2id PHC string only.
CREATE TABLE identity.clients (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    secret_hash    text NOT NULL,
    scopes         text[] NOT NULL,
    audience       text NOT NULL,
    org_id         uuid,
    tier           text,
    roles          text[] NOT NULL,
    token_ttl_secs integer NOT NULL CHECK (token_ttl_secs > 0),
    alg            text NOT NULL CHECK (alg IN ('ES256', 'RS256', 'EdDSA')),
    created_at     timestamptz NOT NULL
);
