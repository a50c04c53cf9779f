"""Open a page in headless Chromium (Debian's `chromium`, installed by `make bootstrap`) as a person would.

The page's DOM after its scripts ran (`--dump-dom` once the virtual time budget is spent) and
every console message (Chromium logs them to stderr as `...:CONSOLE:...` lines). The network is
cut (every host name resolves to nothing), so a page that needs it shows that it does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from recstream.deploy.local.processes import stop_child

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not installed: `make bootstrap` installs it (apt-get install chromium)"
    return path


def open_page(
    page: Path, profile: Path, budget_ms: int = 20_000, timeout_s: float = 180
) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the console messages) of `page` in a fresh profile."""
    proc = subprocess.Popen(
        [
            chromium(),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its renderer and helpers go with it
    )
    try:
        dom, log = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_child(proc, timeout=5)
        raise AssertionError(f"chromium did not render {page} in {timeout_s:g} s") from None
    finally:
        stop_child(proc, timeout=5)  # a no-op once it exited; its helpers' group goes too
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {log[-2000:]}"
    return dom, [line for line in log.splitlines() if ":CONSOLE" in line]
