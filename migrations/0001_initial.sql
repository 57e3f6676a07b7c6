-- Terrace's initial schema: accounts and their ledger, generations and their
-- areas, source images and idempotency keys. The database itself keeps the
-- credit promises: no negative balance, credited = available + held +
-- captured on every account row, a hold resolves at most once, a credit
-- reference applies once.

CREATE TABLE accounts (
    user_id        uuid        PRIMARY KEY,
    trial_credits  bigint      NOT NULL CHECK (trial_credits >= 0),
    token_balance  bigint      NOT NULL CHECK (token_balance >= 0),
    held           bigint      NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured       bigint      NOT NULL DEFAULT 0 CHECK (captured >= 0),
    -- Everything ever credited (trial and grants); the conservation law below
    -- makes every balance change move credits, never create or lose them.
    credited       bigint      NOT NULL CHECK (credited >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_conserved
        CHECK (credited = trial_credits + token_balance + held + captured)
);

CREATE TABLE generations (
    id                 uuid        PRIMARY KEY,
    -- Listing order and page cursor.
    seq                bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_id            uuid        NOT NULL REFERENCES accounts (user_id),
    request_id         text        NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    status             text        NOT NULL CHECK (status IN
                           ('pending', 'processing', 'completed', 'partially_completed', 'failed', 'cancelled')),
    address            text        NOT NULL,
    geocoded_address   text,
    lat                double precision CHECK (lat BETWEEN -90 AND 90),
    lng                double precision CHECK (lng BETWEEN -180 AND 180),
    error_code         text,
    error_message      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    completed_at       timestamptz,
    deadline_at        timestamptz NOT NULL,
    attempt            integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    lease_owner        text,
    lease_expires_at   timestamptz,
    cancel_requested   boolean     NOT NULL DEFAULT false,
    CONSTRAINT generations_lease_whole CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL)),
    CONSTRAINT generations_location_whole CHECK ((lat IS NULL) = (lng IS NULL)),
    CONSTRAINT generations_error_whole CHECK ((error_code IS NULL) = (error_message IS NULL)),
    CONSTRAINT generations_terminal_unleased
        CHECK (status IN ('pending', 'processing') OR lease_owner IS NULL),
    CONSTRAINT generations_pending_unleased CHECK (status <> 'pending' OR lease_owner IS NULL)
);

CREATE INDEX generations_by_user ON generations (user_id, seq DESC);
CREATE INDEX generations_unfinished ON generations (seq) WHERE status IN ('pending', 'processing');
CREATE INDEX generations_by_lease_owner ON generations (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE generation_areas (
    generation_id          uuid        NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    position               smallint    NOT NULL CHECK (position BETWEEN 0 AND 4),
    area                   text        NOT NULL CHECK (area IN
                               ('front_yard', 'backyard', 'walkway', 'side_yard', 'patio', 'pool_area')),
    style                  text        NOT NULL,
    custom_prompt          text        CHECK (length(custom_prompt) <= 500),
    preservation_strength  double precision NOT NULL CHECK (preservation_strength BETWEEN 0 AND 1),
    status                 text        NOT NULL CHECK (status IN
                               ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    stage                  text        NOT NULL CHECK (stage IN
                               ('queued', 'retrieving_imagery', 'generating_design', 'storing', 'done')),
    progress               smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    image_key              text,
    error_code             text,
    error_message          text,
    completed_at           timestamptz,
    hold_source            text        NOT NULL CHECK (hold_source IN ('trial', 'token')),
    hold_state             text        NOT NULL CHECK (hold_state IN ('held', 'captured', 'voided')),
    PRIMARY KEY (generation_id, area),
    UNIQUE (generation_id, position),
    -- An area's hold follows its status: held while unfinished, captured when
    -- completed, voided when failed or cancelled.
    CONSTRAINT areas_hold_follows_status CHECK (
        (status IN ('pending', 'processing') AND hold_state = 'held')
        OR (status = 'completed' AND hold_state = 'captured' AND image_key IS NOT NULL)
        OR (status IN ('failed', 'cancelled') AND hold_state = 'voided' AND error_code IS NOT NULL)
    )
);

-- A resolved hold never changes again, and a terminal area stays terminal.
CREATE FUNCTION terrace_area_terminal_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.hold_state <> 'held' AND NEW.hold_state IS DISTINCT FROM OLD.hold_state THEN
        RAISE EXCEPTION 'hold of % % is already %', OLD.generation_id, OLD.area, OLD.hold_state
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'area % % is already %', OLD.generation_id, OLD.area, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER generation_areas_terminal_is_final
    BEFORE UPDATE ON generation_areas
    FOR EACH ROW EXECUTE FUNCTION terrace_area_terminal_is_final();

CREATE TABLE ledger_entries (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES accounts (user_id),
    kind           text        NOT NULL CHECK (kind IN ('credit', 'hold', 'capture', 'void')),
    amount         bigint      NOT NULL CHECK (amount > 0),
    source         text        NOT NULL CHECK (source IN ('trial', 'token')),
    generation_id  uuid,
    area           text,
    reference      text        CHECK (length(reference) BETWEEN 1 AND 255),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Holds, captures and voids are about one area and one credit; credits are
    -- about no area.
    CONSTRAINT ledger_links CHECK (
        (kind = 'credit' AND generation_id IS NULL AND area IS NULL)
        OR (kind <> 'credit' AND generation_id IS NOT NULL AND area IS NOT NULL AND amount = 1)
    ),
    -- History is never deleted: a generation with ledger entries cannot be removed.
    FOREIGN KEY (generation_id, area) REFERENCES generation_areas (generation_id, area)
);

CREATE INDEX ledger_entries_by_user ON ledger_entries (user_id, id DESC);
-- A grant's reference applies once per account.
CREATE UNIQUE INDEX ledger_credit_reference_once
    ON ledger_entries (user_id, reference) WHERE kind = 'credit' AND source = 'token';
-- One hold per area, and it resolves at most once (a capture or a void).
CREATE UNIQUE INDEX ledger_hold_once ON ledger_entries (generation_id, area) WHERE kind = 'hold';
CREATE UNIQUE INDEX ledger_hold_resolves_once
    ON ledger_entries (generation_id, area) WHERE kind IN ('capture', 'void');

CREATE TABLE source_images (
    generation_id  uuid        NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    kind           text        NOT NULL CHECK (kind IN ('street_view', 'satellite')),
    blob_key       text        NOT NULL,
    content_type   text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation_id, kind)
);

CREATE TABLE idempotency_keys (
    user_id          uuid        NOT NULL REFERENCES accounts (user_id),
    key              text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash     text        NOT NULL,
    generation_id    uuid        NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    response_status  smallint    CHECK (response_status BETWEEN 100 AND 599),
    response_body    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (user_id, key),
    CONSTRAINT idempotency_response_whole CHECK ((response_status IS NULL) = (response_body IS NULL))
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
