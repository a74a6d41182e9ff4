-- Log to file system: bids with their day and minute (Flink's DATE_FORMAT).
SELECT auction, bidder, price, date_time, extra,
       to_char(date_time, '%Y-%m-%d') AS date, to_char(date_time, '%H:%M') AS time
FROM bid
