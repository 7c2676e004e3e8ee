"""The image as users run it: real containers on a real dockerd, driven by the docker CLI.

`make image-test` (tests/image/run.sh) builds the image and sets SIDKEYD_IMAGE; without it
every test here is skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from containers import IMAGE

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IMAGE:
        return
    skip = pytest.mark.skip(
        reason="run by `make image-test`: needs dockerd and the image it builds (SIDKEYD_IMAGE)"
    )
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)
