import os

import pytest
import torch

#: pytest-xdist runs the suite in one process per core (``-n auto``, pyproject.toml): each gets its share of the
#: cores for torch's threads, so that the processes do not oversubscribe them
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    # the tools a test starts choose their threads from the machine's cores, unaware of the other workers: they get
    # this worker's share (measured: a tiny segmentation run at 2 threads beside a busy worker took 1.4-5.4 s per
    # iteration, 0.1 s alone; OpenMP threads that wait for a busy core spin)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``) a test file runs on one process, so its module fixtures are built
    once; tests that share a session fixture across files carry one ``xdist_group`` mark and run together."""
    for item in items:
        if next(item.iter_markers("xdist_group"), None) is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    # the groups that train longest start first (largest first keeps the two workers' ends close): by their number
    # of ``slow`` tests, each group whole and in order; pytest-xdist keeps this order (--no-loadscope-reorder in
    # pyproject.toml; its default puts the groups with the most tests first, which started the quick start's
    # 4-minute group after most of the suite)
    group = {id(item): next(item.iter_markers("xdist_group")).args[0] for item in items}
    slow: dict = {}
    for item in items:
        slow[group[id(item)]] = slow.get(group[id(item)], 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[group[id(item)]])  # stable: the order within each group stays


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models run faster on one thread than on two: their ops are too small to split, and on a loaded
    machine (CI runs jobs side by side) the second thread's waiting costs 10-20x the time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def segmentation_quickstart(tmp_path_factory) -> dict:
    """The segmentation block of docs/quickstart.md, run once per session in a fresh clone (``quickstart_doc``): it
    writes the synthetic ADE-layout data, trains the tiny config as it is and tests the result. ``block``, ``work``
    (the clone) and ``outputs`` (each command's output). ``tests/test_quickstart.py`` checks the block's promise;
    ``tests/segmentation/test_learning.py`` uses its data and checkpoint instead of training the same config on the
    same data again."""
    from quickstart_doc import named_block, run_block, workspace

    tmp = tmp_path_factory.mktemp("quickstart_segmentation")
    block = named_block("segmentation")
    work = workspace(tmp)
    return dict(block=block, work=work, outputs=run_block(block, work, tmp / "log.txt"))


@pytest.fixture(scope="session")
def detection_quickstart(tmp_path_factory) -> dict:
    """The detection block of docs/quickstart.md, run once per session in a fresh clone, with its training killed
    (SIGKILL) once the first periodic checkpoint is written and the same command then rerun with ``--resume``.
    ``tests/test_quickstart.py`` checks the block's promise and the demo; ``tests/detection/test_train.py`` checks
    the resumed run (``killed_at``: the iteration of the checkpoint it resumed from; ``log``: both runs' output).
    """
    from quickstart_doc import named_block, run_block, run_until_killed, workspace

    from eva_transfer.checkpoint_io import read_checkpoint

    tmp = tmp_path_factory.mktemp("quickstart_detection")
    block = named_block("detection")
    work = workspace(tmp)
    log = tmp / "log.txt"
    train, *rest = block["commands"]
    assert "tools/train_net.py" in train, train
    out = work / "output/tiny_coco"
    run_until_killed(block, train, work, log, out / "last_checkpoint")
    first = (out / "last_checkpoint").read_text()
    leftovers = sorted(p.name for p in out.glob("*.tmp"))
    killed_at = read_checkpoint(out / first)["iteration"]
    outputs = run_block(dict(block, commands=[f"{train} --resume", *rest]), work, log)
    return dict(
        block=block,
        work=work,
        out=out,
        outputs=outputs,
        log=log,
        first=first,
        leftovers=leftovers,
        killed_at=killed_at,
    )


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
