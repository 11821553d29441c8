-- Identity, issue 14 third increment: people log in (authorization_code + PKCE), clients gain redirect
-- URIs, allowed grants and authentication methods (`private_key_jwt` with a registered public JWKS,
-- `none` for public clients). Only the identity module reads or writes this schema.

-- A user's password (argon2id PHC string) and the login name it is found by: the user's e-mail,
-- lowercased. E-mails are unique within an org only, so a login is claimed by one user at most
-- (setting a password for a second user with the same e-mail is a conflict). The user itself stays in
-- `tenancy.users`; deleting it deletes its credentials.
CREATE TABLE identity.user_credentials (
    user_id       uuid PRIMARY KEY REFERENCES tenancy.users (id) ON DELETE CASCADE,
    org_id        uuid NOT NULL,
    login         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- `secret_hash` is NULL for clients that authenticate without a secret (public clients, and
-- `private_key_jwt` clients, which register a public JWKS instead).
ALTER TABLE identity.clients ALTER COLUMN secret_hash DROP NOT NULL;
ALTER TABLE identity.clients
    ADD COLUMN redirect_uris text[] NOT NULL DEFAULT '{}',
    ADD COLUMN grant_types   text[] NOT NULL DEFAULT '{client_credentials}',
    ADD COLUMN auth_method   text NOT NULL DEFAULT 'client_secret'
        CHECK (auth_method IN ('client_secret', 'private_key_jwt', 'none')),
    ADD COLUMN jwks          jsonb;
ALTER TABLE identity.clients ADD CONSTRAINT clients_credential CHECK (
    (auth_method = 'client_secret' AND secret_hash IS NOT NULL)
    OR (auth_method = 'private_key_jwt' AND jwks IS NOT NULL)
    OR (auth_method = 'none'));
