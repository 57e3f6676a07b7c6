-- The row rules of the four tables every create and every worker write
-- touches (accounts, generations, generation_areas, ledger_entries), moved
-- from one CHECK constraint per rule into one CHECK per table that calls a
-- PL/pgSQL function holding the same rules.
--
-- Why: Postgres reads a table's CHECK expressions back from their stored
-- text, simplifies and compiles them again for every INSERT or UPDATE
-- statement it runs (they are not cached across statements). These 31 rules
-- were 35 kB of node text per create, about a third of Postgres's CPU per
-- create. A PL/pgSQL function is compiled once per connection; the CHECK
-- that calls it is a few hundred bytes.
--
-- The rules are the same, rule for rule, as 0001 and 0002 left them (the
-- text below is what Postgres printed for each), with a CHECK's meaning: a
-- rule that is NULL (unknown) passes. A row that breaks one is refused with
-- SQLSTATE 23514 (check_violation), and the error names the rule it broke,
-- as the constraint of that name did. They are still CHECK constraints, so
-- no session setting or disabled trigger can skip them. Added NOT VALID:
-- every existing row satisfied the rules they replace, and validating would
-- hold each table's lock for a scan of it; a later migration validates.
--
-- The previous release's writes are judged by the same rules, and it reads
-- nothing this changes.

CREATE FUNCTION terrace_accounts_rules(
    trial_credits_ bigint,
    token_balance_ bigint,
    held_ bigint,
    captured_ bigint,
    credited_ bigint
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF (((trial_credits_ >= 0))
             AND ((token_balance_ >= 0))
             AND ((held_ >= 0))
             AND ((captured_ >= 0))
             AND ((credited_ >= 0))
             AND ((credited_ = (((trial_credits_ + token_balance_) + held_) + captured_)))) IS NOT FALSE THEN
        RETURN true;
    END IF;
    IF ((trial_credits_ >= 0)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "accounts_trial_credits_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_trial_credits_check', TABLE = 'accounts';
    END IF;
    IF ((token_balance_ >= 0)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "accounts_token_balance_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_token_balance_check', TABLE = 'accounts';
    END IF;
    IF ((held_ >= 0)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "accounts_held_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_held_check', TABLE = 'accounts';
    END IF;
    IF ((captured_ >= 0)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "accounts_captured_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_captured_check', TABLE = 'accounts';
    END IF;
    IF ((credited_ >= 0)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "accounts_credited_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_credited_check', TABLE = 'accounts';
    END IF;
    IF ((credited_ = (((trial_credits_ + token_balance_) + held_) + captured_))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "accounts_conserved"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_conserved', TABLE = 'accounts';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE accounts
    ADD CONSTRAINT accounts_rules CHECK (terrace_accounts_rules(trial_credits, token_balance, held, captured, credited)) NOT VALID,
    DROP CONSTRAINT accounts_trial_credits_check,
    DROP CONSTRAINT accounts_token_balance_check,
    DROP CONSTRAINT accounts_held_check,
    DROP CONSTRAINT accounts_captured_check,
    DROP CONSTRAINT accounts_credited_check,
    DROP CONSTRAINT accounts_conserved;

CREATE FUNCTION terrace_generations_rules(
    request_id_ text,
    status_ text,
    lat_ double precision,
    lng_ double precision,
    attempt_ integer,
    lease_owner_ text,
    lease_expires_at_ timestamptz,
    error_code_ text,
    error_message_ text
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF ((((length(request_id_) >= 1) AND (length(request_id_) <= 128)))
             AND ((status_ = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'partially_completed'::text, 'failed'::text, 'cancelled'::text])))
             AND (((lat_ >= ('-90'::integer)::double precision) AND (lat_ <= (90)::double precision)))
             AND (((lng_ >= ('-180'::integer)::double precision) AND (lng_ <= (180)::double precision)))
             AND ((attempt_ >= 0))
             AND (((lease_owner_ IS NULL) = (lease_expires_at_ IS NULL)))
             AND (((lat_ IS NULL) = (lng_ IS NULL)))
             AND (((error_code_ IS NULL) = (error_message_ IS NULL)))
             AND (((status_ = ANY (ARRAY['pending'::text, 'processing'::text])) OR (lease_owner_ IS NULL)))
             AND (((status_ <> 'pending'::text) OR (lease_owner_ IS NULL)))) IS NOT FALSE THEN
        RETURN true;
    END IF;
    IF (((length(request_id_) >= 1) AND (length(request_id_) <= 128))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_request_id_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_request_id_check', TABLE = 'generations';
    END IF;
    IF ((status_ = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'partially_completed'::text, 'failed'::text, 'cancelled'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_status_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_status_check', TABLE = 'generations';
    END IF;
    IF (((lat_ >= ('-90'::integer)::double precision) AND (lat_ <= (90)::double precision))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_lat_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_lat_check', TABLE = 'generations';
    END IF;
    IF (((lng_ >= ('-180'::integer)::double precision) AND (lng_ <= (180)::double precision))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_lng_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_lng_check', TABLE = 'generations';
    END IF;
    IF ((attempt_ >= 0)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_attempt_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_attempt_check', TABLE = 'generations';
    END IF;
    IF (((lease_owner_ IS NULL) = (lease_expires_at_ IS NULL))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_lease_whole"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_lease_whole', TABLE = 'generations';
    END IF;
    IF (((lat_ IS NULL) = (lng_ IS NULL))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_location_whole"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_location_whole', TABLE = 'generations';
    END IF;
    IF (((error_code_ IS NULL) = (error_message_ IS NULL))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_error_whole"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_error_whole', TABLE = 'generations';
    END IF;
    IF (((status_ = ANY (ARRAY['pending'::text, 'processing'::text])) OR (lease_owner_ IS NULL))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_terminal_unleased"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_terminal_unleased', TABLE = 'generations';
    END IF;
    IF (((status_ <> 'pending'::text) OR (lease_owner_ IS NULL))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generations" violates check constraint "generations_pending_unleased"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generations_pending_unleased', TABLE = 'generations';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE generations
    ADD CONSTRAINT generations_rules CHECK (terrace_generations_rules(request_id, status, lat, lng, attempt, lease_owner, lease_expires_at, error_code, error_message)) NOT VALID,
    DROP CONSTRAINT generations_request_id_check,
    DROP CONSTRAINT generations_status_check,
    DROP CONSTRAINT generations_lat_check,
    DROP CONSTRAINT generations_lng_check,
    DROP CONSTRAINT generations_attempt_check,
    DROP CONSTRAINT generations_lease_whole,
    DROP CONSTRAINT generations_location_whole,
    DROP CONSTRAINT generations_error_whole,
    DROP CONSTRAINT generations_terminal_unleased,
    DROP CONSTRAINT generations_pending_unleased;

CREATE FUNCTION terrace_generation_areas_rules(
    position_ smallint,
    area_ text,
    custom_prompt_ text,
    preservation_strength_ double precision,
    status_ text,
    stage_ text,
    progress_ smallint,
    hold_state_ text,
    hold_source_ text,
    image_key_ text,
    error_code_ text
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF ((((position_ >= 0) AND (position_ <= 4)))
             AND ((area_ = ANY (ARRAY['front_yard'::text, 'backyard'::text, 'walkway'::text, 'side_yard'::text, 'patio'::text, 'pool_area'::text])))
             AND ((length(custom_prompt_) <= 500))
             AND (((preservation_strength_ >= (0)::double precision) AND (preservation_strength_ <= (1)::double precision)))
             AND ((status_ = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'failed'::text, 'cancelled'::text])))
             AND ((stage_ = ANY (ARRAY['queued'::text, 'retrieving_imagery'::text, 'generating_design'::text, 'storing'::text, 'done'::text])))
             AND (((progress_ >= 0) AND (progress_ <= 100)))
             AND ((hold_state_ = ANY (ARRAY['held'::text, 'captured'::text, 'voided'::text])))
             AND ((((status_ = ANY (ARRAY['pending'::text, 'processing'::text])) AND (hold_state_ = 'held'::text)) OR ((status_ = 'completed'::text) AND (hold_state_ = 'captured'::text) AND (image_key_ IS NOT NULL)) OR ((status_ = ANY (ARRAY['failed'::text, 'cancelled'::text])) AND (hold_state_ = 'voided'::text) AND (error_code_ IS NOT NULL))))
             AND ((hold_source_ = ANY (ARRAY['trial'::text, 'token'::text, 'subscription'::text])))) IS NOT FALSE THEN
        RETURN true;
    END IF;
    IF (((position_ >= 0) AND (position_ <= 4))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_position_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_position_check', TABLE = 'generation_areas';
    END IF;
    IF ((area_ = ANY (ARRAY['front_yard'::text, 'backyard'::text, 'walkway'::text, 'side_yard'::text, 'patio'::text, 'pool_area'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_area_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_area_check', TABLE = 'generation_areas';
    END IF;
    IF ((length(custom_prompt_) <= 500)) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_custom_prompt_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_custom_prompt_check', TABLE = 'generation_areas';
    END IF;
    IF (((preservation_strength_ >= (0)::double precision) AND (preservation_strength_ <= (1)::double precision))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_preservation_strength_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_preservation_strength_check', TABLE = 'generation_areas';
    END IF;
    IF ((status_ = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'failed'::text, 'cancelled'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_status_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_status_check', TABLE = 'generation_areas';
    END IF;
    IF ((stage_ = ANY (ARRAY['queued'::text, 'retrieving_imagery'::text, 'generating_design'::text, 'storing'::text, 'done'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_stage_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_stage_check', TABLE = 'generation_areas';
    END IF;
    IF (((progress_ >= 0) AND (progress_ <= 100))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_progress_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_progress_check', TABLE = 'generation_areas';
    END IF;
    IF ((hold_state_ = ANY (ARRAY['held'::text, 'captured'::text, 'voided'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_hold_state_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_hold_state_check', TABLE = 'generation_areas';
    END IF;
    IF ((((status_ = ANY (ARRAY['pending'::text, 'processing'::text])) AND (hold_state_ = 'held'::text)) OR ((status_ = 'completed'::text) AND (hold_state_ = 'captured'::text) AND (image_key_ IS NOT NULL)) OR ((status_ = ANY (ARRAY['failed'::text, 'cancelled'::text])) AND (hold_state_ = 'voided'::text) AND (error_code_ IS NOT NULL)))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "areas_hold_follows_status"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'areas_hold_follows_status', TABLE = 'generation_areas';
    END IF;
    IF ((hold_source_ = ANY (ARRAY['trial'::text, 'token'::text, 'subscription'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "generation_areas" violates check constraint "generation_areas_hold_source_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'generation_areas_hold_source_check', TABLE = 'generation_areas';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE generation_areas
    ADD CONSTRAINT generation_areas_rules CHECK (terrace_generation_areas_rules("position", area, custom_prompt, preservation_strength, status, stage, progress, hold_state, hold_source, image_key, error_code)) NOT VALID,
    DROP CONSTRAINT generation_areas_position_check,
    DROP CONSTRAINT generation_areas_area_check,
    DROP CONSTRAINT generation_areas_custom_prompt_check,
    DROP CONSTRAINT generation_areas_preservation_strength_check,
    DROP CONSTRAINT generation_areas_status_check,
    DROP CONSTRAINT generation_areas_stage_check,
    DROP CONSTRAINT generation_areas_progress_check,
    DROP CONSTRAINT generation_areas_hold_state_check,
    DROP CONSTRAINT areas_hold_follows_status,
    DROP CONSTRAINT generation_areas_hold_source_check;

CREATE FUNCTION terrace_ledger_entries_rules(
    kind_ text,
    reference_ text,
    source_ text,
    amount_ bigint,
    generation_id_ uuid,
    area_ text
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF (((kind_ = ANY (ARRAY['credit'::text, 'hold'::text, 'capture'::text, 'void'::text])))
             AND (((length(reference_) >= 1) AND (length(reference_) <= 255)))
             AND ((source_ = ANY (ARRAY['trial'::text, 'token'::text, 'subscription'::text])))
             AND (((amount_ > 0) OR ((source_ = 'subscription'::text) AND (amount_ = 0))))
             AND ((((kind_ = 'credit'::text) AND (generation_id_ IS NULL) AND (area_ IS NULL) AND (source_ <> 'subscription'::text)) OR ((kind_ <> 'credit'::text) AND (generation_id_ IS NOT NULL) AND (area_ IS NOT NULL) AND (amount_ =
CASE
    WHEN (source_ = 'subscription'::text) THEN 0
    ELSE 1
END))))) IS NOT FALSE THEN
        RETURN true;
    END IF;
    IF ((kind_ = ANY (ARRAY['credit'::text, 'hold'::text, 'capture'::text, 'void'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "ledger_entries" violates check constraint "ledger_entries_kind_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_kind_check', TABLE = 'ledger_entries';
    END IF;
    IF (((length(reference_) >= 1) AND (length(reference_) <= 255))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "ledger_entries" violates check constraint "ledger_entries_reference_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_reference_check', TABLE = 'ledger_entries';
    END IF;
    IF ((source_ = ANY (ARRAY['trial'::text, 'token'::text, 'subscription'::text]))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "ledger_entries" violates check constraint "ledger_entries_source_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_source_check', TABLE = 'ledger_entries';
    END IF;
    IF (((amount_ > 0) OR ((source_ = 'subscription'::text) AND (amount_ = 0)))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "ledger_entries" violates check constraint "ledger_entries_amount_check"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_amount_check', TABLE = 'ledger_entries';
    END IF;
    IF ((((kind_ = 'credit'::text) AND (generation_id_ IS NULL) AND (area_ IS NULL) AND (source_ <> 'subscription'::text)) OR ((kind_ <> 'credit'::text) AND (generation_id_ IS NOT NULL) AND (area_ IS NOT NULL) AND (amount_ =
CASE
    WHEN (source_ = 'subscription'::text) THEN 0
    ELSE 1
END)))) IS FALSE THEN
        RAISE EXCEPTION 'new row for relation "ledger_entries" violates check constraint "ledger_links"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_links', TABLE = 'ledger_entries';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_rules CHECK (terrace_ledger_entries_rules(kind, reference, source, amount, generation_id, area)) NOT VALID,
    DROP CONSTRAINT ledger_entries_kind_check,
    DROP CONSTRAINT ledger_entries_reference_check,
    DROP CONSTRAINT ledger_entries_source_check,
    DROP CONSTRAINT ledger_entries_amount_check,
    DROP CONSTRAINT ledger_links;
