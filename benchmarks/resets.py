"""Episode starts (resets): a call with resets against the same call without, and against the
split-and-pad way with torch.nn, side by side in one process.

    python3 benchmarks/resets.py [--steps 200 --batch 32 --hidden 256 --rounds 15]

Each row of a rollout holds episodes of 10-60 steps one after another (the last one cut). Timed,
interleaved round by round (medians): fused_rnn's layer on the whole rollout without resets (the
same call minus the restarts), with resets, and torch.nn's layer on the episodes split apart,
padded and packed (building that batch included, as a caller must), forward (no_grad) and
forward+backward. Ratios to fused_rnn without resets and to the split-and-pad way.
"""

import argparse
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn


def rollout_resets(steps, batch, generator):
    resets = torch.zeros(steps, batch, dtype=torch.bool)
    for b in range(batch):
        t = 0
        while t < steps:
            resets[t, b] = True
            t += int(torch.randint(10, 61, (1,), generator=generator))
    return resets


def split_and_padded(x, resets):
    """The episodes of every row as one packed batch (longest first)."""
    steps, batch = resets.shape
    found = []
    for b in range(batch):
        starts = resets[:, b].nonzero().flatten().tolist() + [steps]
        found += [(b, s, e - s) for s, e in zip(starts, starts[1:])]
    found.sort(key=lambda e: -e[2])
    padded = x.new_zeros(found[0][2], len(found), x.size(2))
    for k, (b, s, n) in enumerate(found):
        padded[:n, k] = x[s:s + n, b]
    return pack_padded_sequence(padded, torch.tensor([n for _, _, n in found]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    T, B, H = args.steps, args.batch, args.hidden
    print(f"T={T} B={B} I=H={H}, episodes of 10-60 steps, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, float32\n")
    print("| layer | pass | fused_rnn, no resets (ms) | fused_rnn, resets (ms) | torch.nn split and "
          "padded (ms) | resets / no resets | resets / split and padded |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("lstm", "gru"):
        torch.manual_seed(0)
        theirs = getattr(torch.nn, kind.upper())(H, H)
        ours = getattr(fused_rnn, kind.upper())(H, H)
        ours.load_state_dict(theirs.state_dict())
        resets = rollout_resets(T, B, torch.Generator().manual_seed(1))
        x = torch.randn(T, B, H)
        for training in (False, True):
            xs = x.clone().requires_grad_(training)

            def run(call):
                with torch.set_grad_enabled(training):
                    out = call()
                    if training:
                        out.sum().backward()

            calls = {
                "none": lambda: ours(xs)[0],
                "resets": lambda: ours(xs, resets=resets)[0],
                "split": lambda: theirs(split_and_padded(xs, resets))[0].data,
            }
            times = {name: [] for name in calls}
            for call in calls.values():
                run(call)
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    run(call)
                    times[name].append(time.perf_counter() - start)
            med = {name: 1e3 * sorted(v)[len(v) // 2] for name, v in times.items()}
            print(f"| {kind.upper()} | {'fwd+bwd' if training else 'fwd'} | {med['none']:.2f} | "
                  f"{med['resets']:.2f} | {med['split']:.2f} | "
                  f"{med['resets'] / med['none']:.3f} | {med['resets'] / med['split']:.3f} |")


if __name__ == "__main__":
    main()
