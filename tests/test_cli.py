"""Every command line of the kit answers --help with its usage (argparse formats help strings with %, so a
stray '%' in one breaks --help with a traceback)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [["eval.py"], ["report.py"], ["report.py", "table"], ["report.py", "compare"], ["replay.py"],
            ["meta_loop.py"], ["train_lora.py"], ["train_lora.py", "data"], ["train_lora.py", "sft"],
            ["train_lora.py", "gguf"], ["train_lora.py", "engine"], ["llm.py"], ["jail.py"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_prints_usage(command):
    out = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.startswith("usage:")
