-- Average selling price by seller: the winning bids of each seller's last
-- 10 auctions. (Flink publishes no q6: its SQL groups by A.id but selects
-- B.date_time; here the auction's last bid time orders them.)
SELECT Q.seller,
       avg(Q.final) OVER (PARTITION BY Q.seller ORDER BY Q.date_time
                          ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg
FROM (
  SELECT max(B.price) AS final, A.seller, max(B.date_time) AS date_time
  FROM auction AS A, bid AS B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.seller
) AS Q
