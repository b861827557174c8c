#!/usr/bin/env python3
"""Container health check: exit 0 iff ``GET http://127.0.0.1:$SER_PORT/ready`` answers 200, else 1.

``/ready`` answers 503 until the model is loaded and warmed up, so the container turns healthy only when
it can serve predictions. Standard library only: the image needs no curl. Proxy variables are ignored
(the request never leaves the container). Env: ``SER_PORT`` (default 8000), ``SER_HEALTHCHECK_TIMEOUT``
(seconds, default 5).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(port: str, timeout: float) -> tuple[bool, str]:
    """Ask the local service whether it is ready; returns ``(ready, reason)``."""
    url = f"http://127.0.0.1:{port}/ready"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200, f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} unreachable: {exc}"


def main() -> int:
    ready, reason = check(
        os.environ.get("SER_PORT", "8000"), float(os.environ.get("SER_HEALTHCHECK_TIMEOUT", "5"))
    )
    print(reason, file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
