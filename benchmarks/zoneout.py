"""Zoneout: a training call (forward+backward) with zoneout against the same call without, side by
side in one process.

    python3 benchmarks/zoneout.py [--shapes 200x32x256,50x64x512,100x1x256] [--p 0.1]
                                  [--kinds lstm,gru,layernorm_lstm,layernorm_gru] [--rounds 15]

For each shape TxBxH (I = H, float32, training mode) the module without zoneout and a copy with
zoneout=p run interleaved round by round (medians), forward+backward of output.sum(), and in
evaluation mode forward only (no_grad). Ratios: with zoneout / without.
"""

import argparse
import time

import torch

import fused_rnn

MODULES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "layernorm_lstm": fused_rnn.LayerNormLSTM,
           "layernorm_gru": fused_rnn.LayerNormGRU}


def median_ms(calls, rounds):
    """Each call once to warm up, then `rounds` interleaved rounds: the medians in ms."""
    times = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(v)[len(v) // 2] for name, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="200x32x256,50x64x512,100x1x256")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--kinds", default=",".join(MODULES))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"zoneout p={args.p}, {args.rounds} rounds, {torch.get_num_threads()} threads, "
          f"float32\n")
    print("| layer | T | B | H | pass | without (ms) | with zoneout (ms) | with / without |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        T, B, H = (int(v) for v in shape.split("x"))
        for kind in args.kinds.split(","):
            torch.manual_seed(0)
            plain = MODULES[kind](H, H)
            zoned = MODULES[kind](H, H, zoneout=args.p)
            zoned.load_state_dict(plain.state_dict())
            x = torch.randn(T, B, H, requires_grad=True)

            def train(module):
                module.train()(x)[0].sum().backward()

            def infer(module):
                with torch.no_grad():
                    module.eval()(x)

            for name, run in (("fwd+bwd", train), ("fwd (eval)", infer)):
                med = median_ms({"without": lambda: run(plain), "with": lambda: run(zoned)},
                                args.rounds)
                print(f"| {kind} | {T} | {B} | {H} | {name} | {med['without']:.2f} | "
                      f"{med['with']:.2f} | {med['with'] / med['without']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
