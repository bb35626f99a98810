#!/usr/bin/env python3
"""Serve the prebuilt OHIF viewer (npm @ohif/app, dist/) on loopback for conformance/ohif.sh.

A single-page app: any path without a file behind it gets index.html (deep links such as
/viewer?StudyInstanceUIDs=...); /app-config.js is replaced by --config (the packaged one
points at a public demo server); .wasm codecs get application/wasm.

Usage: serve_ohif.py --dist DIST --config APP_CONFIG_JS --port PORT
"""
import argparse
import io
import mimetypes
import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


class Handler(SimpleHTTPRequestHandler):
    config_path = None

    def log_message(self, fmt, *args):
        pass

    def send_head(self):
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            data = open(self.config_path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return io.BytesIO(data)
        if not os.path.exists(self.translate_path(path)):
            self.path = "/index.html"
        return super().send_head()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dist", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    Handler.config_path = os.path.abspath(a.config)
    ThreadingHTTPServer(("127.0.0.1", a.port), partial(Handler, directory=a.dist)).serve_forever()


if __name__ == "__main__":
    main()
