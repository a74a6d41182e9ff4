-- Bounded side input join: each bid with the side input's row current when
-- it arrived (side_input: a table of key BIGINT, value TEXT).
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B
JOIN side_input FOR SYSTEM_TIME AS OF PROCTIME() AS S ON B.auction % 10000 = S.key
