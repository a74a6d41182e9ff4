-- Processing-time windows: bids per bidder per 10 s of processing time
-- (bid declares p_time TIMESTAMP AS PROCTIME()).
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM TUMBLE(bid, p_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end
