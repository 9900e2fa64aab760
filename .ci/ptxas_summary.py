"""Summarise ptxas' -v report (from a build log) per sm_90 or sm_90a kernel: registers, shared
memory, spills."""

import re
import subprocess
import sys


def demangle(symbol: str) -> str:
    name = subprocess.run(["c++filt", symbol], capture_output=True, text=True).stdout.strip()
    return name.replace("fused_rnn::(anonymous namespace)::", "") or symbol


def main(log_path: str) -> None:
    kernel, spills = None, ""
    for line in open(log_path):
        entry = re.search(r"Compiling entry function '(\w+)' for 'sm_90a?'", line)
        if entry:
            kernel, spills = demangle(entry.group(1)), ""
            continue
        if kernel and "spill stores" in line:
            spills = ", ".join(line.strip().split(", ")[1:])
        used = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if kernel and used:
            print(f"{used.group(1):>4} regs {used.group(2) or 0:>6} B smem  {spills:<40} {kernel}")
            kernel = None


if __name__ == "__main__":
    main(sys.argv[1])
