"""Health check of the runner container: exit 0 when its heartbeat is fresh."""

from __future__ import annotations

import sys
import time

from cleanroom.runner.identity import runner_name
from cleanroom.settings import Settings


def main() -> int:
    settings = Settings.from_env()
    try:
        mine = settings.runner_home / "runners" / f"{runner_name(settings)}.heartbeat"  # not another runner's
        beat = float((mine if mine.exists() else settings.runner_home / "heartbeat").read_text())
    except (OSError, ValueError):
        return 1
    return 0 if time.time() - beat < 30 else 1


if __name__ == "__main__":
    sys.exit(main())
