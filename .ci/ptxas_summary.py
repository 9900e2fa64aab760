"""Summarise ptxas' -v report (from a build log) per sm_90 or sm_90a kernel: registers, shared
memory, spills.

    python3 .ci/ptxas_summary.py BUILD_LOG [--no-spills REGEX]

--no-spills: exit with status 1 where a kernel whose name matches REGEX spills (CI: every kernel;
the persistent ones keep their weights in registers for the whole sequence, where a spill costs
every step).
"""

import argparse
import re
import subprocess
import sys


def demangle(symbol: str) -> str:
    name = subprocess.run(["c++filt", symbol], capture_output=True, text=True).stdout.strip()
    return name.replace("fused_rnn::(anonymous namespace)::", "") or symbol


def kernels(log_path: str):
    """(registers, shared bytes, spill report, spilled bytes, kernel) per kernel of the log."""
    kernel, spills, spilled = None, "", 0
    for line in open(log_path):
        entry = re.search(r"Compiling entry function '(\w+)' for 'sm_90a?'", line)
        if entry:
            kernel, spills, spilled = demangle(entry.group(1)), "", 0
            continue
        if kernel and "spill stores" in line:
            spills = ", ".join(line.strip().split(", ")[1:])
            spilled = sum(int(n) for n in re.findall(r"(\d+) bytes spill", line))
        used = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if kernel and used:
            yield int(used.group(1)), int(used.group(2) or 0), spills, spilled, kernel
            kernel = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log")
    parser.add_argument("--no-spills", metavar="REGEX", default=None)
    args = parser.parse_args(argv)
    spilling = []
    for registers, shared, spills, spilled, kernel in kernels(args.log):
        print(f"{registers:>4} regs {shared:>6} B smem  {spills:<40} {kernel}")
        if args.no_spills and spilled and re.search(args.no_spills, kernel):
            spilling.append(kernel)
    for kernel in spilling:
        print(f"SPILLS: {kernel}", file=sys.stderr)
    return 1 if spilling else 0


if __name__ == "__main__":
    sys.exit(main())
