"""How the CPU kernels meet fresh memory: two threads writing a fresh buffer must not fault its
pages in twice over (benchmarks/NOTES.md entry 33).

glibc maps large buffers afresh and the kernel faults their pages in on first write; the step
kernels split their outputs by column blocks, so without care both threads fault the same page at
once. The check runs in a subprocess with every buffer over 64 KB mapped afresh (M_MMAP_THRESHOLD),
and compares the page faults of a call on two threads with those on one.
"""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys, torch, fused_rnn
    M_MMAP_THRESHOLD = -3
    assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 16) == 1
    kind, op = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    if op == "layer":
        module = (fused_rnn.LSTM if kind == "lstm" else fused_rnn.GRU)(256, 256)
        x = torch.randn(20, 64, 256, requires_grad=True)
        def call():
            module(x)[0].sum().backward()
    else:
        module = (fused_rnn.LSTMCell if kind == "lstm" else fused_rnn.GRUCell)(512, 512)
        x = torch.randn(1, 512, requires_grad=True)
        def call():
            out = module(x)
            (out[0] if kind == "lstm" else out).sum().backward()
            module.zero_grad(set_to_none=True)
    def faults_per_call(threads):
        torch.set_num_threads(threads)
        call(); call()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            call()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    print(faults_per_call(1), faults_per_call(2))
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt sets where buffers are mapped afresh")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two threads")
@pytest.mark.parametrize("op", ["layer", "cell"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_two_threads_fault_fresh_pages_in_once(kind, op):
    run = subprocess.run([sys.executable, "-c", SCRIPT, kind, op], capture_output=True,
                         text=True, check=True)
    one_thread, two_threads = map(float, run.stdout.split())
    # The forward and backward map tens of MB afresh (a layer here ~14 MB, a cell's weight
    # gradients 8 MB); doubled faults would show as ~1.5-2x.
    assert one_thread > 1000
    assert two_threads <= 1.1 * one_thread, (one_thread, two_threads)
