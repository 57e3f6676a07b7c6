-- Billing (CONTRACT §7): a user's Stripe customer and subscription, the
-- Stripe events already applied, and holds of an active subscription
-- (source 'subscription', amount 0).
--
-- Expand only: new tables, and checks widened to admit the new source. A
-- release before this one never writes such rows; it would refuse to read a
-- generation held by a subscription, which only this release creates.

CREATE TABLE billing_accounts (
    user_id               uuid        PRIMARY KEY REFERENCES accounts (user_id),
    stripe_customer_id    text        CHECK (length(stripe_customer_id) BETWEEN 1 AND 255),
    plan                  text        CHECK (plan IN ('monthly_pro')),
    subscription_id       text        CHECK (length(subscription_id) BETWEEN 1 AND 255),
    status                text        NOT NULL DEFAULT 'none'
                                      CHECK (status IN ('none', 'active', 'past_due', 'cancelled')),
    current_period_end    timestamptz,
    cancel_at_period_end  boolean     NOT NULL DEFAULT false,
    -- The newest event applied to the subscription: Stripe's `created`, then
    -- the kind of event (see terrace_domain::billing::EventOrder).
    applied_created       bigint,
    applied_rank          smallint,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT billing_applied_whole CHECK ((applied_created IS NULL) = (applied_rank IS NULL))
);

CREATE INDEX billing_by_subscription ON billing_accounts (subscription_id) WHERE subscription_id IS NOT NULL;
CREATE INDEX billing_by_customer ON billing_accounts (stripe_customer_id) WHERE stripe_customer_id IS NOT NULL;

-- Each Stripe event takes effect at most once: its id is recorded in the
-- transaction that applies it.
CREATE TABLE stripe_events (
    id           text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    type         text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'ignored')),
    received_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE generation_areas DROP CONSTRAINT generation_areas_hold_source_check;
ALTER TABLE generation_areas ADD CONSTRAINT generation_areas_hold_source_check
    CHECK (hold_source IN ('trial', 'token', 'subscription'));

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_source_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_source_check
    CHECK (source IN ('trial', 'token', 'subscription'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_amount_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_amount_check
    CHECK (amount > 0 OR (source = 'subscription' AND amount = 0));
-- Holds, captures and voids are about one area: one credit, or none when
-- an active subscription holds it.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_links;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_links CHECK (
    (kind = 'credit' AND generation_id IS NULL AND area IS NULL AND source <> 'subscription')
    OR (kind <> 'credit' AND generation_id IS NOT NULL AND area IS NOT NULL
        AND amount = CASE WHEN source = 'subscription' THEN 0 ELSE 1 END)
);
