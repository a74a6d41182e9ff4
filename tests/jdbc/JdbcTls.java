// JDBC over TLS with SCRAM-SHA-256: verify-full against the test CA.
// Usage: java -cp postgresql.jar JdbcTls.java <port> <ca.pem> <password>
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.Properties;

public class JdbcTls {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/eddy";
        Properties props = new Properties();
        props.setProperty("user", "eddy");
        props.setProperty("password", args[2]);
        props.setProperty("sslmode", "verify-full");
        props.setProperty("sslrootcert", args[1]);
        try (Connection c = DriverManager.getConnection(url, props);
             Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT current_user")) {
            r.next();
            if (!r.getString(1).equals("eddy")) {
                throw new AssertionError("current_user is " + r.getString(1));
            }
        }
        // A wrong password is refused.
        props.setProperty("password", "wrong");
        try (Connection c = DriverManager.getConnection(url, props)) {
            throw new AssertionError("a wrong password was accepted");
        } catch (java.sql.SQLException e) {
            if (!"28P01".equals(e.getSQLState())) {
                throw new AssertionError("wrong password: " + e.getSQLState() + " " + e.getMessage());
            }
        }
        System.out.println("jdbc tls ok");
    }
}
