"""Loopback stand-ins for Anthropic's and Gemini's APIs (and a plain OpenAI chat
endpoint that answers ANSWER whole), speaking their real wire
formats (whole and streamed), for gateway tests. Each answers a request that offers
`get_weather` and has no tool result yet with a call to it, and otherwise with text
that quotes the tool result. Every request body is kept for the test to inspect."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CITY_ARGS = {"city": "Sofia"}
ANSWER = "It is 23 degrees and clear in Sofia."
THOUGHT = "The user wants the weather; I should call the tool."
SIGNATURE = "EqQBCgIYAhIM-mock-signature"


class Mock:
    def __init__(self):
        self.requests = []
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                mock.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if "/messages" in self.path:
                    mock.anthropic(self, body)
                elif ":generateContent" in self.path or ":streamGenerateContent" in self.path:
                    mock.gemini(self, body)
                elif self.path.endswith("/chat/completions"):
                    mock._json(self, {"id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": body.get("model"),
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()

    @staticmethod
    def _json(h, obj):
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _sse(h, events):
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        for name, data in events:
            text = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
            raw = text.encode()
            h.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")

    # ---- Anthropic Messages ----
    def anthropic(self, h, body):
        offered = any(t.get("name") == "get_weather" for t in body.get("tools", []))
        answered = any(isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"]) for m in body["messages"])
        call = offered and not answered
        think = bool(body.get("thinking"))
        # A stop sequence the caller gave that the answer would contain ends it there.
        stop = next((s for s in body.get("stop_sequences", []) if s in ANSWER), None)
        text = ANSWER[:ANSWER.index(stop)] if stop else ANSWER
        usage = {"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 2}
        stop_reason = "tool_use" if call else ("stop_sequence" if stop else "end_turn")
        if not body.get("stream"):
            content = [{"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE}] if think else []
            content += [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": CITY_ARGS}] if call else [{"type": "text", "text": text}]
            return self._json(h, {"id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"], "content": content,
                                  "stop_reason": stop_reason, "stop_sequence": stop, "usage": usage})
        events = [("message_start", {"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
                                                                           "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}),
                  ("ping", {"type": "ping"})]
        k = 0
        if think:
            events += [("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": THOUGHT}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
                       ("content_block_stop", {"type": "content_block_stop", "index": 0})]
            k = 1
        if call:
            args = json.dumps(CITY_ARGS)
            events.append(("content_block_start", {"type": "content_block_start", "index": k, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}))
            for i in range(0, len(args), 5):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": k, "delta": {"type": "input_json_delta", "partial_json": args[i:i + 5]}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": k, "content_block": {"type": "text", "text": ""}}))
            for i in range(0, len(text), 6):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": k, "delta": {"type": "text_delta", "text": text[i:i + 6]}}))
        events += [("content_block_stop", {"type": "content_block_stop", "index": k}),
                   ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop}, "usage": {"output_tokens": 7}}),
                   ("message_stop", {"type": "message_stop"})]
        self._sse(h, events)

    # ---- Gemini generateContent ----
    def gemini(self, h, body):
        decls = [d for t in body.get("tools", []) for d in t.get("functionDeclarations", t.get("function_declarations", []))]
        offered = any(d.get("name") == "get_weather" for d in decls)
        answered = any("functionResponse" in p or "function_response" in p for c in body.get("contents", []) for p in c.get("parts", []))
        call = offered and not answered
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 7, "totalTokenCount": 19}

        def chunk(parts, finish=None):
            cand = {"content": {"role": "model", "parts": parts}, "index": 0}
            if finish:
                cand["finishReason"] = finish
            return {"candidates": [cand], "usageMetadata": usage, "modelVersion": "gemini-mock"}

        if ":generateContent" in h.path:
            parts = [{"functionCall": {"name": "get_weather", "args": CITY_ARGS}}] if call else [{"text": ANSWER}]
            return self._json(h, chunk(parts, "STOP"))
        if call:
            chunks = [chunk([{"functionCall": {"name": "get_weather", "args": CITY_ARGS}}], "STOP")]
        else:
            words = ANSWER.split(" ")
            chunks = [chunk([{"text": w + " "}]) for w in words[:-1]] + [chunk([{"text": words[-1]}], "STOP")]
        self._sse(h, [(None, c) for c in chunks])
