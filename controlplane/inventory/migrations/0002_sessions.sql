-- Session history. Live sessions (heartbeats, expiry) stay in Redis; this table is the
-- record an operator audits afterwards: who was logged in where, with which virtual ID,
-- and why the session ended (logout, replaced, expired, moved).
CREATE TABLE sessions (
    id          text PRIMARY KEY,
    account     text NOT NULL,              -- no foreign keys: history outlives the inventory rows
    site        text NOT NULL,
    mac         char(12) NOT NULL,
    extension   text NOT NULL,
    vaid        integer NOT NULL,
    reason      text NOT NULL DEFAULT '',   -- why this site: local, rule:<id>, local_pbx_down ...
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    end_reason  text
);
CREATE INDEX sessions_account ON sessions (account, started_at DESC);
CREATE INDEX sessions_open ON sessions (site) WHERE ended_at IS NULL;
