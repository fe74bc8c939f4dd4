"""A minimal HTTPS Anthropic upstream for the TLS test: answers POST /v1/messages with a JSON
message that echoes what it received. Usage: tls_upstream.py CERT KEY. Prints its port."""

import http.server
import json
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        reply = json.dumps({
            "type": "message",
            "role": "assistant",
            "model": json.loads(body).get("model"),
            "content": [{"type": "text", "text": "over tls"}],
            "usage": {"input_tokens": 3, "output_tokens": 2},
            "seen_api_key": self.headers.get("x-api-key"),
            "seen_host": self.headers.get("host"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
