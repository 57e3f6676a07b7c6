-- Pending work by age, for the claim made as soon as new work is
-- announced: it finds the oldest pending generations here without reading
-- every running generation's lease, which the index of unfinished work
-- would make it do (running generations are older than pending ones, so
-- they come first in it). One more index entry per create; status changes
-- already update the other partial index, so no update that was HOT stops
-- being HOT.
CREATE INDEX generations_pending ON generations (seq) WHERE status = 'pending';
