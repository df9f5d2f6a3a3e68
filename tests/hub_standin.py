"""A local HTTP stand-in for the Hub API endpoints that create_repo + upload_folder use (no network in tests)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class HubStandIn:
    """Records created repos and committed files; every file is accepted as a regular (inline) upload."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.validated: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path))
                if self.headers.get("authorization") != "Bearer hf_test_token":
                    return self._reply(401, {"error": "bad token"})
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created.append(request)
                    repo = f"{request.get('organization') or 'user'}/{request['name']}"
                    return self._reply(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})
                if self.path == "/api/validate-yaml":  # the card's YAML header must parse
                    content = json.loads(body)["content"]
                    hub.validated.append(content)
                    try:
                        yaml.safe_load(content.split("---")[1] if content.startswith("---") else "")
                    except yaml.YAMLError as error:
                        return self._reply(400, {"error": str(error)})
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    return self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/0123abcd",
                                             "commitOid": "0123abcd" * 5})
                return self._reply(404, {"error": f"unexpected {self.path}"})

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                return self._reply(404, {"error": f"unexpected {self.path}"})

        return Handler
