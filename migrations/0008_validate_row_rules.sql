-- The row rules of 0007 were added NOT VALID: new and changed rows were
-- checked from then on, and every row already there had satisfied the
-- rules they replaced. Validating certifies those rows too. Each VALIDATE
-- scans its table under SHARE UPDATE EXCLUSIVE, which blocks neither reads
-- nor writes (only DDL and vacuum of that table, until the run commits).
-- A database whose tables are too large to scan within the statement
-- timeout can be validated by hand first, with these same statements:
-- validating a valid constraint again is instant.
ALTER TABLE accounts VALIDATE CONSTRAINT accounts_rules;
ALTER TABLE generations VALIDATE CONSTRAINT generations_rules;
ALTER TABLE generation_areas VALIDATE CONSTRAINT generation_areas_rules;
ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_rules;
