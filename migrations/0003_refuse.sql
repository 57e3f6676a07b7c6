-- A statement sent together with its transaction's COMMIT cannot hand the
-- caller a flag to roll back on: the COMMIT runs before the caller reads
-- the answer. Such a statement calls terrace_refuse when it finds it must
-- not write; the error aborts the transaction, so the COMMIT that follows
-- rolls it back, and the caller reads the error's SQLSTATE.
--
-- VOLATILE, so that the planner never evaluates it ahead of time: only the
-- branch of a CASE that calls it raises.
CREATE FUNCTION terrace_refuse(code text, message text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
END
$$;
