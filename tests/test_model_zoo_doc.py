"""Every command line of docs/model_zoo.md has a test that runs it: its tool is in ``model_zoo_doc.RUNNERS``, whose
module exists and takes that tool's commands from the page (``commands_for("<tool>")``). A tool newly documented
on the page without such a test fails here. The same holds for docs/model_zoo_eva02.md, whose runners read that
page (``commands_for(..., doc=DOC_EVA02)``)."""

from __future__ import annotations

import pytest
from model_zoo_doc import DOC_EVA02, PREFIX, REPO, RUNNERS, commands, tool_of


def test_the_page_has_commands_of_each_section():
    tools = {tool_of(c) for c in commands()}
    # pre-training, detection and segmentation: a parser that lost a section would leave its tools out
    assert {"convert_checkpoint.py", "pretrain.py", "train_net.py", "test_seg.py", "train_seg.py"} <= tools
    assert all(c.startswith(PREFIX) for c in commands())


def test_every_documented_tool_has_a_runner_and_every_runner_a_documented_tool():
    documented = {tool_of(c) for c in commands()}
    without = sorted(documented - set(RUNNERS))
    assert not without, (
        f"docs/model_zoo.md documents {without}; add their runner test to model_zoo_doc.RUNNERS"
    )
    stale = sorted(set(RUNNERS) - documented)
    assert not stale, f"model_zoo_doc.RUNNERS names {stale}, which docs/model_zoo.md no longer documents"


@pytest.mark.parametrize("tool", sorted(RUNNERS))
def test_runner_module_exists_and_runs_the_tools_commands(tool):
    assert (REPO / "tools" / tool).is_file(), f"docs/model_zoo.md runs tools/{tool}, which does not exist"
    module = REPO / RUNNERS[tool]
    assert module.is_file(), f"{RUNNERS[tool]} (the runner of {tool}) does not exist"
    source = module.read_text()
    assert "commands_for(" in source, f"{RUNNERS[tool]} does not take its commands from the page"
    assert f'"{tool}"' in source, f"{RUNNERS[tool]} does not name {tool} among the tools it runs"


def test_every_tool_of_the_eva02_page_has_a_runner_that_reads_that_page():
    tools = {tool_of(c) for c in commands(DOC_EVA02)}
    assert "train_net.py" in tools and all(c.startswith(PREFIX) for c in commands(DOC_EVA02))
    for tool in sorted(tools):
        assert tool in RUNNERS, (
            f"docs/model_zoo_eva02.md documents {tool}; add its runner to model_zoo_doc.RUNNERS"
        )
        source = (REPO / RUNNERS[tool]).read_text()
        assert "doc=DOC_EVA02" in source and f'"{tool}"' in source, (
            f"{RUNNERS[tool]} does not run the page's {tool}"
        )
