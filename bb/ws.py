def upgrade(conn, ex, req, vhost):
    conn.fail(501, "WebSocket not ready", ex)
