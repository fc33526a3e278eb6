"""A stand-in warehouse webhook for the compose demo: every POST is accepted with a reference.

Standard library only, so it runs in a plain python image. Replace WAREHOUSE_URL in production.
"""

import itertools
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_refs = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        order = json.loads(self.rfile.read(length) or b"{}")
        payload = json.dumps({"reference": f"WH-{next(_refs)}"}).encode()
        print(f"warehouse: order {order.get('order_id')} accepted", flush=True)
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # healthcheck
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8081), Handler).serve_forever()
