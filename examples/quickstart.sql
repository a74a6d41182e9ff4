-- The quick-start session from the README: paste it into psql connected to
-- eddy (psql -h 127.0.0.1 -p 6543 -U eddy), or run it with -f.
CREATE TABLE bids (id BIGINT PRIMARY KEY, auction BIGINT, bidder TEXT, price BIGINT);

INSERT INTO bids VALUES (1, 10, 'ann', 30), (2, 10, 'bob', 45), (3, 20, 'ann', 12);

CREATE MATERIALIZED VIEW auction_prices AS
SELECT auction, count(*) AS bids, max(price) AS top, avg(price) AS mean
FROM bids GROUP BY auction;

SELECT * FROM auction_prices ORDER BY auction;

-- Changes flow into the view incrementally; FLUSH waits until they are visible.
INSERT INTO bids VALUES (4, 20, 'cid', 80);
UPDATE bids SET price = 50 WHERE id = 1;
DELETE FROM bids WHERE id = 2;
FLUSH;

SELECT * FROM auction_prices ORDER BY auction;

-- Views over views, and any SQL over views.
CREATE MATERIALIZED VIEW hot AS SELECT auction, top FROM auction_prices WHERE top >= 50;
FLUSH;
SELECT auction, top, rank() OVER (ORDER BY top DESC) AS place FROM hot;

EXPLAIN CREATE MATERIALIZED VIEW by_bidder AS
SELECT bidder, count(*) AS bids FROM bids GROUP BY bidder;

SHOW MATERIALIZED VIEWS;
