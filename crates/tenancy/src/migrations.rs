//! The store's schema, one numbered step at a time (see `Store::migrate`).

/// Each step is applied once, in order, in its own transaction.
pub(crate) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        models TEXT NOT NULL,
        rpm BIGINT,
        tpm BIGINT,
        max_concurrent BIGINT,
        budget_tokens BIGINT,
        budget_usd DOUBLE PRECISION,
        expires_at BIGINT,
        metadata TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE usage (
        at BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT,
        model TEXT NOT NULL,
        deployment TEXT NOT NULL,
        front_door TEXT NOT NULL,
        streamed BIGINT NOT NULL,
        status TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        latency_ms BIGINT NOT NULL,
        ttft_ms BIGINT,
        estimated BIGINT NOT NULL
    );
    CREATE INDEX usage_key_at ON usage (key_id, at);
    CREATE INDEX usage_at ON usage (at);",
    "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // Responses API conversations: each turn's input items and the response object,
    // linked to the turn before; `key_id` scopes them to the key that made them.
    "CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        key_id TEXT,
        created_at BIGINT NOT NULL,
        previous_id TEXT,
        input TEXT NOT NULL,
        response TEXT NOT NULL
    );",
    // A store that has held a key stays closed (see `Store::keys_required`): stores from
    // before this marker are closed if they hold any key row.
    "INSERT INTO settings (name, value) SELECT 'keys_required', '1' WHERE EXISTS (SELECT 1 FROM keys);",
    // The token-signing secret no longer lives in the database (see `tokens::signing_key`).
    "DELETE FROM settings WHERE name = 'token_secret';",
    // Accounts: people, their sessions, access requests, one-time links and the audit
    // log; a key may belong to a user.
    "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        organization TEXT NOT NULL,
        password_hash TEXT,
        created_at BIGINT NOT NULL,
        disabled_at BIGINT
    );
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT,
        address TEXT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    CREATE TABLE access_requests (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        name TEXT NOT NULL,
        organization TEXT NOT NULL,
        intended_use TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        decided_at BIGINT,
        decided_by TEXT,
        user_id TEXT
    );
    CREATE TABLE one_time_links (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        purpose TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );
    CREATE TABLE audit (
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        address TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit (at);
    ALTER TABLE keys ADD COLUMN user_id TEXT;
    CREATE INDEX keys_user ON keys (user_id);",
    // Teams and prepaid balances: limits per user and per team (each key is held to the
    // strictest of its own, its user's and its team's), a credit ledger per team or
    // user, and redemption codes (stored hashed).
    "CREATE TABLE teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        limits TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE team_members (
        team_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL,
        added_at BIGINT NOT NULL,
        PRIMARY KEY (team_id, user_id)
    );
    CREATE INDEX team_members_user ON team_members (user_id);
    ALTER TABLE users ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE keys ADD COLUMN team_id TEXT;
    CREATE INDEX keys_team ON keys (team_id);
    CREATE TABLE ledger (
        id TEXT PRIMARY KEY,
        at BIGINT NOT NULL,
        payer TEXT NOT NULL,
        amount_usd DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        note TEXT NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE INDEX ledger_payer ON ledger (payer);
    CREATE TABLE codes (
        code_hash TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        amount_usd DOUBLE PRECISION NOT NULL,
        note TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        redeemed_at BIGINT,
        redeemed_by TEXT
    );",
    // Single sign-on: a sign-in in progress at the provider, usable once.
    "CREATE TABLE oidc_flows (
        state_hash TEXT PRIMARY KEY,
        nonce TEXT NOT NULL,
        verifier TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );",
];
