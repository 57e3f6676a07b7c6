-- Unfinished work by deadline, for the sweep that ends overdue generations
-- (earliest deadline first) and for the gauge of work stuck past its
-- deadline: both read only the rows past a deadline here, where they read
-- every unfinished row through generations_unfinished before (hundreds of
-- milliseconds per sweep with tens of thousands queued). One more index
-- entry per create and per claim of pending work, whose status change
-- already updates the other partial indexes.
CREATE INDEX generations_unfinished_by_deadline ON generations (deadline_at)
    WHERE status IN ('pending', 'processing');
