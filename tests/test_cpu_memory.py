"""How the CPU kernels meet fresh memory: two threads writing a fresh buffer must not fault its
pages in twice over (benchmarks/NOTES.md entry 33), and the backward's weight gradients and the
layers' saved values and gate gradients reuse freed blocks instead of fresh memory (the block
cache, entries 37 and 59).

glibc maps large buffers afresh and the kernel faults their pages in on first write; the step
kernels split their outputs by column blocks, so without care both threads fault the same page at
once. The checks run in a subprocess with every buffer over 64 KB mapped afresh (M_MMAP_THRESHOLD)
and count the page faults of a call. The layer's weight gradients are left out: oneDNN computes
them by blocks of rows into buffers of its own, which its threads share page by page (mapped
afresh here, they are reused from the heap in a process with glibc's usual thresholds; entry 48).
"""

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

import fused_rnn

SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys, torch, fused_rnn
    M_MMAP_THRESHOLD = -3
    assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 16) == 1
    kind, op, blocks = sys.argv[1:4]
    torch.manual_seed(0)
    if op == "layer":
        layers = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU,
                  "layernorm_lstm": fused_rnn.LayerNormLSTM}
        module = layers[kind](256, 256)
        module.requires_grad_(False)  # the weight gradients are oneDNN's (docstring)
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
        # (The mean of six calls: one CI run's mean of three fresh calls fell 1200 faults, 8%,
        # under every run before and since.)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(6):
            if blocks == "fresh":
                fused_rnn.empty_cpu_cache()
            call()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6
    print(faults_per_call(1), faults_per_call(2))
""")


needs_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt sets where buffers are mapped afresh")
needs_two_threads = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two threads")


def faults_per_call(kind, op, blocks):
    """Page faults per call on one thread and on two; blocks "fresh" empties the block cache
    before each call."""
    run = subprocess.run([sys.executable, "-c", SCRIPT, kind, op, blocks], capture_output=True,
                         text=True, check=True)
    return tuple(map(float, run.stdout.split()))


@needs_glibc
@needs_two_threads
@pytest.mark.parametrize("op", ["layer", "cell"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_two_threads_fault_fresh_pages_in_once(kind, op):
    one_thread, two_threads = faults_per_call(kind, op, "fresh")
    # The forward and backward map tens of MB afresh (a layer here ~14 MB, a cell's weight
    # gradients 8 MB); doubled faults would show as ~1.5-2x.
    assert one_thread > 1000
    assert two_threads <= 1.1 * one_thread, (one_thread, two_threads)


@needs_glibc
@needs_two_threads
def test_layer_saved_values_and_gate_gradients_reuse_freed_blocks():
    # The layer-normalized LSTM's saved values (1280 rows of 13 * 256 + 3 floats: 4164 pages)
    # and its two gate gradients ([1280, 1024] floats: 1280 pages each) come from held blocks.
    # Counted on one thread: on two, the fresh count also moves with how often both threads
    # fault the same page (the test above), by more than a thousand faults on a loaded machine.
    (fresh, _), (cached, _) = (faults_per_call("layernorm_lstm", "layer", blocks) for blocks in
                               ("fresh", "cached"))
    saved_pages = 1280 * (13 * 256 + 3) * 4 // 4096
    assert fresh - cached > 0.9 * (saved_pages + 2 * 1280), (fresh, cached)


@needs_glibc
@needs_two_threads
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_weight_gradients_reuse_freed_blocks(kind):
    # Fresh, the two weight gradients alone are 1536-2048 pages a call (as test above).
    assert max(faults_per_call(kind, "cell", "cached")) < 100


def gradients(cell, x):
    return torch.autograd.grad(cell(x)[0].sum(), list(cell.parameters()))


def test_a_gradient_in_use_is_never_written_again():
    torch.manual_seed(0)
    cell, x = fused_rnn.LSTMCell(256, 512), torch.randn(1, 256)
    fused_rnn.empty_cpu_cache()
    held = gradients(cell, x)
    copies = [g.clone() for g in held]
    w_hh_block = held[1].data_ptr()
    for _ in range(3):
        again = gradients(cell, torch.randn(1, 256))
        assert w_hh_block not in {g.data_ptr() for g in again}
    for g, copy in zip(held, copies):
        assert torch.equal(g, copy)
    # Freed, W_ih's [2048, 256] and W_hh's [2048, 512] blocks are held, and W_hh's reused.
    del again
    fused_rnn.empty_cpu_cache()
    del held
    assert fused_rnn.cpu_cache_bytes() == 2048 * (256 + 512) * 4
    assert gradients(cell, x)[1].data_ptr() == w_hh_block


def test_the_cache_holds_at_most_512_mb_and_empties():
    torch.manual_seed(0)
    fused_rnn.empty_cpu_cache()
    # A layer's saved values and gate gradients: 2 * 102400 rows of 13 * 32 + 3 floats and
    # [102400, 128] floats, ~440 MB a call, in blocks of sizes that differ between the calls.
    layer = fused_rnn.LayerNormLSTM(8, 32)
    for steps in (400, 399, 398):
        x = torch.randn(steps, 256, 8, requires_grad=True)
        layer(x)[0].sum().backward()
        assert fused_rnn.cpu_cache_bytes() <= 512 << 20
    assert fused_rnn.cpu_cache_bytes() > 384 << 20
    fused_rnn.empty_cpu_cache()
    assert fused_rnn.cpu_cache_bytes() == 0
