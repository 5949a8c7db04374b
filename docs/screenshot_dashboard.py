"""Take the README's optuna-dashboard screenshot: a demo study's trial page with its sample grid.

Needs Debian's `chromium` (apt-get install chromium). Serves `skipsearch dashboard` on the given
storage, then lets headless Chromium render the trial list of the first study.

    python docs/screenshot_dashboard.py --storage sqlite:///skipsearch.db --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"dashboard did not answer at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///skipsearch.db")
    parser.add_argument("--artifacts", default="skipsearch-artifacts")
    parser.add_argument("--study-id", type=int, default=1)
    parser.add_argument("--trial", type=int, default=None, help="trial number to show (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--size", default="1500,1100")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium not found: apt-get install chromium")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "skipsearch", "dashboard", "--storage", args.storage, "--port", str(port),
         "--artifacts", args.artifacts],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/meta", 60)
        page = f"{base}/dashboard/studies/{args.study_id}/trials"
        if args.trial is not None:
            page += f"?numbers={args.trial}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={args.size}",
                 "--virtual-time-budget=15000", f"--screenshot={args.out.resolve()}", page],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ), timeout=120,
            )
        print(f"wrote {args.out} from {page}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
