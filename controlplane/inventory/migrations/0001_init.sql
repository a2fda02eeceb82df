-- ccdr inventory, version 1. Names that end up in PBX configs are checked by the
-- importer against a safe character set; the CHECKs here are the last line.
CREATE TABLE regions (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,31}$')
);
CREATE TABLE sites (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    region      text NOT NULL REFERENCES regions(id)
);
CREATE TABLE systems (               -- lines of business
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
);
CREATE TABLE skill_groups (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
);
CREATE TABLE skill_group_queues (    -- the queue that serves a skill group at a site
    skill_group text NOT NULL REFERENCES skill_groups(id) ON DELETE CASCADE,
    site        text NOT NULL REFERENCES sites(id),
    queue       text NOT NULL CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    PRIMARY KEY (skill_group, site)
);
CREATE TABLE agents (
    account       text PRIMARY KEY CHECK (account ~ '^[A-Za-z0-9._@-]{1,64}$'),
    password_hash text NOT NULL,     -- argon2; '' = external authenticator decides
    system        text NOT NULL REFERENCES systems(id),
    home_region   text NOT NULL REFERENCES regions(id)
);
CREATE TABLE agent_skills (
    account     text NOT NULL REFERENCES agents(account) ON DELETE CASCADE,
    skill_group text NOT NULL REFERENCES skill_groups(id),
    penalty     integer NOT NULL DEFAULT 0 CHECK (penalty BETWEEN 0 AND 100),
    PRIMARY KEY (account, skill_group)
);
CREATE TABLE devices (
    mac         char(12) PRIMARY KEY CHECK (mac ~ '^[0-9a-f]{12}$'),
    model       text NOT NULL,
    location    text NOT NULL DEFAULT ''
);
CREATE TABLE device_lines (          -- a phone's extension and SIP account at each site
    mac          char(12) NOT NULL REFERENCES devices(mac) ON DELETE CASCADE,
    site         text NOT NULL REFERENCES sites(id),
    extension    text NOT NULL CHECK (extension ~ '^[0-9A-Za-z_.-]{1,32}$'),
    sip_username text NOT NULL CHECK (sip_username ~ '^[0-9A-Za-z_.-]{1,64}$'),
    sip_password text NOT NULL,      -- a secret the PBX needs in clear; never logged
    PRIMARY KEY (mac, site),
    UNIQUE (site, extension)
);
CREATE TABLE virtual_agent_ids (
    id          integer PRIMARY KEY CHECK (id > 0),
    session_id  text UNIQUE          -- NULL = free; UNIQUE: one ID per live session
);
CREATE INDEX virtual_agent_ids_free ON virtual_agent_ids (id) WHERE session_id IS NULL;
CREATE TABLE planned_switch_rules (
    id          serial PRIMARY KEY,
    scope       text NOT NULL CHECK (scope IN ('system', 'region', 'skill_group', 'all')),
    value       text NOT NULL DEFAULT '',
    from_site   text NOT NULL REFERENCES sites(id),
    to_site     text NOT NULL REFERENCES sites(id),
    enabled     boolean NOT NULL DEFAULT true,
    CHECK (from_site <> to_site)
);
