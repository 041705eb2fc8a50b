import os

import pytest
import torch

# the suite is sized for 2 cores; keep torch from oversubscribing them
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def logged(caplog):
    """``logged(name)``: the INFO records of logger ``name`` and its children as text, caught even where a
    framework set ``propagate = False`` on a parent (Detectron2's ``setup_logger`` does)."""
    import logging

    attached = []

    def start(name: str):
        log = logging.getLogger(name)
        log.addHandler(caplog.handler)
        attached.append((log, log.level))
        log.setLevel(logging.INFO)

        def text() -> str:
            # a record that also propagates to the root logger reaches the same handler twice: count it once
            unique = {id(r): r for r in caplog.records if r.name == name or r.name.startswith(name + ".")}
            return "\n".join(r.getMessage() for r in unique.values())

        return text

    yield start
    for log, level in attached:
        log.removeHandler(caplog.handler)
        log.setLevel(level)
