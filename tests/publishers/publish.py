#!/usr/bin/env python3
"""Publish one event through Switchyard's publish API, with the standard library only.

    python3 publish.py URL KEY CHANNEL DATA_JSON [IDEMPOTENCY_KEY]
    python3 publish.py http://127.0.0.1:8090/v1/publish "$KEY" announcements '{"text": "hi"}'

Prints the answer's JSON (channel, epoch, offset) and exits 0; on an HTTP error prints the
error's JSON body to stderr and exits 1.
"""

import json
import sys
import urllib.error
import urllib.request


def publish(url, key, channel, data, idempotency_key=None):
    body = json.dumps({"channel": channel, "data": data}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def main(argv):
    if len(argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    url, key, channel, data = argv[1:5]
    try:
        answer = publish(url, key, channel, json.loads(data), *argv[5:])
    except urllib.error.HTTPError as e:
        print(f"HTTP {e.code}: {e.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
