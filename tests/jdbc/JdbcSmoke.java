// A real JDBC client (the PostgreSQL driver from Maven Central) against eddy:
// prepared statements with typed parameters, a materialized view, and reads
// of every common type. Run by tests/jdbc.rs; exits non-zero on any mismatch.
import java.math.BigDecimal;
import java.sql.*;

public class JdbcSmoke {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/eddy";
        try (Connection c = DriverManager.getConnection(url, "eddy", "")) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE trades (id BIGINT PRIMARY KEY, sym TEXT, qty INT, px NUMERIC(10,2), at TIMESTAMP, ok BOOLEAN)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?)")) {
                for (int i = 1; i <= 4; i++) {
                    p.setLong(1, i);
                    p.setString(2, i % 2 == 0 ? "AAPL" : "MSFT");
                    p.setInt(3, i * 10);
                    p.setBigDecimal(4, new BigDecimal("100.25").add(BigDecimal.valueOf(i)));
                    p.setTimestamp(5, Timestamp.valueOf("2024-03-0" + i + " 09:30:00"));
                    p.setBoolean(6, i != 3);
                    check(p.executeUpdate() == 1, "insert count");
                }
            }
            try (Statement s = c.createStatement()) {
                s.execute("CREATE MATERIALIZED VIEW volume AS SELECT sym, sum(qty) AS qty, max(px) AS top, count(*) AS n FROM trades GROUP BY sym");
                s.execute("FLUSH");
            }
            try (PreparedStatement p = c.prepareStatement("SELECT sym, qty, top, n FROM volume WHERE sym = ?")) {
                p.setString(1, "AAPL");
                try (ResultSet r = p.executeQuery()) {
                    check(r.next(), "a row for AAPL");
                    check(r.getString(1).equals("AAPL"), "sym");
                    check(r.getLong(2) == 60, "qty " + r.getLong(2));
                    check(r.getBigDecimal(3).compareTo(new BigDecimal("104.25")) == 0, "top " + r.getBigDecimal(3));
                    check(r.getLong(4) == 2, "n");
                    check(!r.next(), "one row");
                }
            }
            try (PreparedStatement p = c.prepareStatement("SELECT id, at, ok, px FROM trades WHERE qty > ? ORDER BY id")) {
                p.setInt(1, 25);
                try (ResultSet r = p.executeQuery()) {
                    check(r.next(), "row 3");
                    check(r.getLong(1) == 3, "id");
                    check(r.getTimestamp(2).equals(Timestamp.valueOf("2024-03-03 09:30:00")), "timestamp " + r.getTimestamp(2));
                    check(!r.getBoolean(3), "ok");
                    check(r.getBigDecimal(4).compareTo(new BigDecimal("103.25")) == 0, "px");
                    check(r.next() && r.getLong(1) == 4, "row 4");
                }
            }
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO trades VALUES (1, 'X', 1, 1, NULL, true)");
                throw new AssertionError("duplicate key accepted");
            } catch (SQLException e) {
                check("23505".equals(e.getSQLState()), "duplicate key SQLSTATE " + e.getSQLState());
            }
            DatabaseMetaData meta = c.getMetaData();
            check(meta.getDatabaseProductName() != null, "metadata");
            // What BI tools (Metabase, DBeaver, Grafana) do first: list
            // tables and views, then their columns.
            java.util.Set<String> tables = new java.util.TreeSet<>();
            try (ResultSet r = meta.getTables(null, "public", "%", null)) {
                while (r.next()) {
                    tables.add(r.getString("TABLE_NAME") + ":" + r.getString("TABLE_TYPE"));
                }
            }
            check(tables.contains("trades:TABLE"), "getTables lists trades: " + tables);
            check(tables.contains("volume:MATERIALIZED VIEW"), "getTables lists volume: " + tables);
            java.util.List<String> columns = new java.util.ArrayList<>();
            try (ResultSet r = meta.getColumns(null, "public", "volume", "%")) {
                while (r.next()) {
                    columns.add(r.getString("COLUMN_NAME") + ":" + r.getString("TYPE_NAME"));
                }
            }
            check(columns.size() == 4 && columns.get(0).startsWith("sym:"), "getColumns: " + columns);
        }
        System.out.println("jdbc ok");
    }
}
