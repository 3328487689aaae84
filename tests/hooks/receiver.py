"""A webhook receiver for tests/it/webhooks.rs.

Verifies every delivery with the reference implementation of Standard
Webhooks (the `standardwebhooks` package from PyPI) and appends one JSON line
per delivery to the log file: {"path", "verified", "id", "type", "data",
"timestamp", "error"}. A delivery that does not verify is answered 400.

    receiver.py PORT LOG_FILE SECRETS_JSON

SECRETS_JSON maps a path ("/a") to its "whsec_..." secret. Control, on the
same port:
  POST /_control {"now": T}          verify timestamps against time T (the
                                     gateway's test clock) instead of the
                                     wall clock; T moves on with real time
  POST /_control {"path": P, "status": S, "delay": D}
                                     answer P with status S after D seconds
It prints "ready" once it listens.
"""

import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks.webhooks as sw

PORT = int(sys.argv[1])
LOG = sys.argv[2]
SECRETS = json.loads(sys.argv[3])
STATE = {"offset": 0.0, "paths": {}}
LOCK = threading.Lock()


class ShiftedDatetime(datetime):
    """The library's `now`, moved to the gateway's test clock."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(seconds=STATE["offset"])


sw.datetime = ShiftedDatetime


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n)
        if self.path == "/_control":
            c = json.loads(body)
            with LOCK:
                if "now" in c:
                    STATE["offset"] = float(c["now"]) - time.time()
                if "path" in c:
                    STATE["paths"][c["path"]] = (c.get("status", 200), c.get("delay", 0))
            return self.answer(204)
        secret = SECRETS.get(self.path)
        if secret is None:
            return self.answer(404)
        record = {"path": self.path, "id": self.headers.get("webhook-id"),
                  "timestamp": self.headers.get("webhook-timestamp")}
        try:
            payload = sw.Webhook(secret).verify(body, dict(self.headers.items()))
            record.update(verified=True, type=payload["type"], data=payload["data"],
                          at=payload["timestamp"])
        except Exception as e:  # any failure to verify is recorded and refused
            record.update(verified=False, error=f"{type(e).__name__}: {e}")
        with LOCK:
            status, delay = STATE["paths"].get(self.path, (200, 0))
            if not record["verified"]:
                status = 400
            record.update(status=status, delay=delay)
            # Logged on arrival: a slow answer may come after the sender
            # has given up on it.
            with open(LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
        if delay:
            time.sleep(delay)
        self.answer(status)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
