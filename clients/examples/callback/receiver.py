"""A Smile ID callback receiver that checks each callback's signature through sidkeyd.

    SIDKEYD_SOCKET=/run/sidkeyd/sidkeyd.sock python receiver.py 8080 production

Smile ID signs its callbacks with the same HMAC as requests (``signature`` and ``timestamp``
in the JSON body). A callback signed with a key rotated a moment ago still verifies: sidkeyd
checks its backend once before it answers "invalid". Standard library and sidkeyd.client only.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from sidkeyd.client import Client

client = Client()  # $SIDKEYD_SOCKET, else /run/sidkeyd/sidkeyd.sock
ENVIRONMENT = sys.argv[2] if len(sys.argv) > 2 else "production"


class Callback(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = client.verify(ENVIRONMENT, body["timestamp"], body["signature"])
        self.send_response(200 if answer["valid"] else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()
        # ... hand body["result"] to the application when valid


HTTPServer(("127.0.0.1", int(sys.argv[1])), Callback).serve_forever()
