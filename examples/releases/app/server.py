"""A tiny HTTP server that says which release it runs from.

Started with its working directory at the release's `current` link, it reports the release
id (the name of the directory the link pointed at when it started) and the version in
`app/VERSION`; `/health` answers 200 while `app/VERSION` is readable.
"""

import http.server
import os
import sys

RELEASE = os.path.basename(os.getcwd())
VERSION_FILE = os.path.join(os.getcwd(), "app", "VERSION")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            ok = os.path.exists(VERSION_FILE)
            self.reply(200 if ok else 503, "ok\n" if ok else "no VERSION\n")
        else:
            with open(VERSION_FILE) as f:
                version = f.read().strip()
            self.reply(200, f"release {RELEASE} version {version}\n")

    def reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
