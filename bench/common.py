"""What the benchmark scripts share: the machine's name for result files, and the command-line
tail that runs a benchmark, writes its report and prints the Markdown."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_name(device: torch.device | None = None) -> str:
    """The GPU's name for a CUDA device, else ``cpu-<model> x<cores>``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu-{model} x{os.cpu_count()}"


def report_main(parser, run, write, argv=None) -> int:
    """Parse ``argv``, ``report = run(args)``, ``write(report, out) -> path stem``, print its
    Markdown; a user error prints ``error: ...`` and gives exit code 2 (vmae2_fast.cli.exit_code)."""
    from vmae2_fast.cli import exit_code
    args = parser.parse_args(argv)

    def body():
        stem = write(run(args), Path(args.out))
        print(Path(stem).with_suffix(".md").read_text())

    return exit_code(body)


def machine_slug(machine: str, limit: int = 60) -> str:
    """A machine name as a file-name part: lower case, runs of other characters as one '-'."""
    slug = "".join(c if c.isalnum() else "-" for c in machine).strip("-").lower()
    return "-".join(x for x in slug.split("-") if x)[:limit]
