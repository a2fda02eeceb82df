-- A session re-homed to another site (POST /v1/move) keeps its id, token and virtual
-- agent ID; each move is a row here, and sessions.site/extension follow the session.
CREATE TABLE session_moves (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL,              -- sessions.id; no foreign key, like sessions itself
    moved_at    timestamptz NOT NULL DEFAULT now(),
    from_site   text NOT NULL,
    to_site     text NOT NULL,
    extension   text NOT NULL
);
CREATE INDEX session_moves_session ON session_moves (session_id, moved_at);
